"""A minion's hellos: quick while its key is pending, then at the heartbeat's pace."""

from __future__ import annotations

from daybook.model.keys import Key
from daybook.net.keys import KeyPair
from minion.enrollment import Enrollment

KEYPAIR = KeyPair.generate()


def standing(state: str) -> Key:
    return Key(KEYPAIR.public, "minion", state, "web-1", "127.0.0.1", 1.0, 1.0)


def test_an_accepted_minion_says_hello_at_the_pace_in_force() -> None:
    answers = [standing("pending"), standing("accepted"), standing("accepted")]
    pace = [30.0]
    enrollment = Enrollment(
        host="web-1",
        own_fingerprint=KEYPAIR.fingerprint,
        trusted_key="unused",
        hello=lambda: answers.pop(0),
        fetch_master_key=None,
        pending_interval_s=2.0,
        accepted_interval_s=lambda: pace[0],
    )
    assert enrollment.step() == 2.0
    assert enrollment.step() == 30.0
    pace[0] = 120.0  # the master asked a large fleet to heartbeat every 20 s
    assert enrollment.step() == 120.0
