"""Train the format-following shapes task (answers in JSON), then score it next to its image-blind control.

    python train_shapes_json.py --config configs/shapes_json.yaml [key=value ...]
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from mm_excitor.cli import run_cli
from tasks import get_task
from tasks.run import train


def main(argv: Sequence[str]) -> dict:
    """Train then evaluate; returns the run summary (with `eval` scores)."""
    return train(get_task("shapes_json"), argv)


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
