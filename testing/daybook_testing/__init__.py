"""What the tests and the bench share: real daybook processes on loopback, an S3 server,
a Consul double, the swarm (a thousand minions in one process), and waiting on conditions.

It is a package of its own, in a distribution of its own (`testing/`, installed with
`pip install -e ./testing` by the Makefile), rather than:

- modules in `tests/`, which the bench could only import by putting `tests/` on sys.path,
  and which pytest imports by file name, not as a package;
- a package in daybook's own distribution, which would ship test servers and load tools in
  every wheel and make the harness look like part of the product (the swarm lived in
  `minion/` once; the load tests and the bench both start it, so it lives here).

Nothing here imports pytest: the bench uses it outside any test run. What fails raises the
error a caller chooses (AssertionError in tests, RuntimeError in the bench).
"""
