"""Jittered exponential backoff: how long to wait before trying again."""

from __future__ import annotations

import random

# Past this many doublings every sane cap is reached; the bound keeps 2**n a float.
_MAX_DOUBLINGS = 64


def backoff_s(
    attempt: int, *, start_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """The pause after failure number `attempt` (1, 2, ...): `start_s` doubled per failure
    up to `max_s`, then drawn from the upper half of that, so that many clients failing
    together (a fleet whose store came back) do not retry in step."""
    doublings = max(0, min(attempt, _MAX_DOUBLINGS) - 1)
    ceiling = min(max_s, start_s * 2.0**doublings)
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
