"""Deprecated user-level routes of the legacy tracker, as thin adapters over per-account integrations."""
