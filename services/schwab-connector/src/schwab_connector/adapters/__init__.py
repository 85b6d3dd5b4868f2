"""The connector's edges: schwab-py over HTTP, NATS KV for the shared budget and refresh leases."""
