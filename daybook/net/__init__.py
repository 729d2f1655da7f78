"""The network between master, minions and operators: CURVE transport and key files, the
master's endpoints file, and the operator client."""
