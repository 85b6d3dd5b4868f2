"""Scheduling feature of account-api."""
