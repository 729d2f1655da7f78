"""Shared test fixtures: the S3 (moto) and Consul-compatible servers, loaded as plugins."""

pytest_plugins = ["s3_server", "consul_server"]
