"""Accounts feature of account-api."""
