"""Thin FastStream subscribers: decode, log at DEBUG, call the connector."""
