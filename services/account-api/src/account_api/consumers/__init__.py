"""Consumers feature of account-api."""
