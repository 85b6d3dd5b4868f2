"""Audit feature of account-api."""
