"""Pure rules of the connector: token lifecycle, rate budget arithmetic, batching, mapping."""
