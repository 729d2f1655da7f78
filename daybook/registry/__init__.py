"""Where mappings live: the `Registry` protocol (`base`), Consul (`consul`) and a local
file (`file`), chosen by `open_registry(url)`."""
