"""Gateway endpoints: who owns which IB Gateway address, and which addresses may be used."""
