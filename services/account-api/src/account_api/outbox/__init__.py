"""Outbox feature of account-api."""
