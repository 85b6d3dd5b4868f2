"""brokerlink's dev-only kit: the `make run` supervisor and embedded servers (devstack) and the
test fixtures (testing). Never installed in production images."""
