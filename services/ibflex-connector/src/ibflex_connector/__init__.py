"""IB Flex Web Service connector: daily balances, positions and cash from a Flex Query."""
