"""Pure rules of the connector: token lifecycle, retry, mapping."""
