"""Daybook's benchmarks: `python -m bench [SECTION...] [--quick]` prints figures and saves them.

Never part of the test run: nothing here asserts a time; each figure is shown with its
target and whether this run met it.
"""
