"""Entry points end on a one-line message, not a traceback, when the user's input is what is wrong."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any


def run_cli(main: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> int:
    """Run `main(argv)`; a missing file or an invalid config/data/checkpoint (OSError, ValueError: every error the
    project raises for bad input) prints `error: ...` and returns 2. Set MM_EXCITOR_TRACEBACK=1 to see the stack."""
    try:
        main(argv)
    except (OSError, ValueError) as error:
        if os.environ.get("MM_EXCITOR_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
