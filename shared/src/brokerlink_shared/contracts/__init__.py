"""Pydantic models of every event on the bus (`events`) and of the values they carry (`values`)."""
