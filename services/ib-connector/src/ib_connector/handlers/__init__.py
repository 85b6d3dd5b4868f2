"""Thin FastStream subscribers: decode, call the service, nothing else."""
