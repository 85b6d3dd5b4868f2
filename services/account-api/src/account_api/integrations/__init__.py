"""Integrations feature of account-api."""
