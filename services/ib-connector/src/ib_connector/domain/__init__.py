"""Pure logic of the connector: no sockets, no bus, no clocks of its own."""
