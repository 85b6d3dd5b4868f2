"""History feature of account-api."""
