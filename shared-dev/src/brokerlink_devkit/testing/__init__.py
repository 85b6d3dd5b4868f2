"""The one test fixture layer: where NATS and PostgreSQL come from, fresh names, waiting."""

from brokerlink_devkit.testing.waiting import wait_until

__all__ = ["wait_until"]
