"""The connector's edges: IB's Flex Web Service over HTTPS."""
