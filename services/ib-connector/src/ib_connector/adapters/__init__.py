"""The connector's edges: the ib_async gateway client and the NATS KV session ownership."""
