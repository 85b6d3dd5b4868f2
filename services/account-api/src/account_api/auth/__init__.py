"""Auth feature of account-api."""
