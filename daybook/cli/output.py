"""`--json` output, shared by every command."""

from __future__ import annotations

import json
import sys
from typing import IO


def emit_json(document: object, out: IO[str] | None = None) -> None:
    """Write one JSON document and a newline: indented for a terminal, compact for a pipe.

    Scripts read the same document either way. Compact output goes through the json
    module's C encoder, which an indent rules out: for a 1,000-host sync the indented
    document costs an operator's command about 20 ms more.
    """
    stream = out or sys.stdout
    pretty = stream.isatty()
    stream.write(json.dumps(document, indent=2 if pretty else None) + "\n")
