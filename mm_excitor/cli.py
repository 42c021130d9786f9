"""The error contract of every entry point (train_*.py and each `python -m ...` command): a failure ends the
process with one line `error: ...` on stderr and exit status 2, not a traceback; `MM_EXCITOR_TRACEBACK=1` shows
the stack instead.

Bad input (a missing file, an invalid config, data or checkpoint) raises ValueError or OSError with a message
meant for the user; anything else is a bug or the machine (out of memory, a dead peer) and is reported with its
type. A failure inside a DataLoader worker reaches the main process as torch's re-raised wrapper, whose message
holds the worker's whole traceback; its last line, the original error, is what the user needs.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

TRACEBACK_VARIABLE = "MM_EXCITOR_TRACEBACK"
_EXCEPTION_PREFIX = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception): ")


def error_line(error: BaseException) -> str:
    """The one line that says what went wrong."""
    message = str(error)
    if "Original Traceback" in message:  # torch's ExceptionWrapper: "Caught X in DataLoader worker process N..."
        lines = [line for line in message.splitlines() if line.strip()]
        where = lines[0].rstrip(".").split(" in ", 1)[-1]
        original = _EXCEPTION_PREFIX.sub("", lines[-1].strip(), count=1)
        return f"{original} (in {where})"
    if isinstance(error, (ValueError, OSError)):
        return message or type(error).__name__
    return f"{type(error).__name__}: {message} (set {TRACEBACK_VARIABLE}=1 for the stack)"


def format_ids(ids: Sequence[object], limit: int = 10) -> str:
    """`1, 2, 3 (+7 more)`: error messages name the offending ids without flooding the terminal."""
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def run_cli(main: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> int:
    """Run `main(argv)` under the contract above; returns the exit status (SystemExit passes through)."""
    try:
        main(argv)
    except Exception as error:  # noqa: BLE001 - the contract covers every failure
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f"error: {error_line(error)}", file=sys.stderr, flush=True)
        return 2
    return 0
