"""Train a captioner (COCO-style captions), then score it next to its image-blind control.

    python train_caption.py --config configs/coco_llama7b.yaml [key=value ...]
    torchrun --nproc_per_node 8 train_caption.py --config configs/coco_llama7b.yaml
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from mm_excitor.cli import run_cli
from tasks import get_task
from tasks.run import train


def main(argv: Sequence[str]) -> dict:
    """Train then evaluate; returns the run summary (with `eval` scores)."""
    return train(get_task("caption"), argv)


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
