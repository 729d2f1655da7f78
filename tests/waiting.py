"""Waiting in tests: the harness's wait_for, which fails as an assertion by default."""

from daybook_testing.waiting import DEADLINE_S, wait_for

__all__ = ["DEADLINE_S", "wait_for"]
