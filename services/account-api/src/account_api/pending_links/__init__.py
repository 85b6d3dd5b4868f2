"""Integrations the legacy-data migrator could not attach to an account with certainty."""
