"""Log set-up for every daybook process: one line a record on the current stderr,
`daybook: LEVEL: message`, with chatty libraries held at warnings."""

from __future__ import annotations

import logging
import sys

# Libraries that log every request at INFO; their warnings still show.
NOISY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted.

    A handler bound to the stream of the moment would keep writing to a closed stream once
    `sys.stderr` is swapped (pytest's capture, a daemon redirecting its output), from
    background threads that outlive the command that configured logging.
    """

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def verbosity_level(verbosity: int) -> int:
    """The level for `-v` given `verbosity` times: warnings, then info, then debug."""
    return logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG


def configure_logging(level: int, *, program: str = "daybook") -> None:
    """Send every record at `level` or above to stderr as `PROGRAM: LEVEL: message`,
    replacing whatever handlers the root logger had."""
    handler = CurrentStderrHandler()
    handler.setFormatter(logging.Formatter(f"{program}: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
