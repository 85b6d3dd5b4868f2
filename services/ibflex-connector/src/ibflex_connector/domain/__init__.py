"""Pure rules: what IB's Flex answers mean (errors), and a statement mapped to our values."""
