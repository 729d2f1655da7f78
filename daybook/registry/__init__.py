"""Where mappings live, and which master leads: the `Registry` and `Leadership` protocols
(`base`), Consul (`consul`, `consul_leadership`) and local files (`file`, `lease`), chosen
by `open_registry(url)` and `open_leadership(url)`."""
