"""Local runtime: embedded NATS and PostgreSQL, and the `make run` supervisor."""
