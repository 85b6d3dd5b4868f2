"""Ui feature of account-api."""
