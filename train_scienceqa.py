"""Train on ScienceQA (QCM-A by default), then score the eval split with the official breakdown, with the images and
without them (the image-blind control).

    python train_scienceqa.py --config configs/scienceqa_llama7b.yaml [key=value ...]
    torchrun --nproc_per_node 8 train_scienceqa.py --config configs/scienceqa_llama7b.yaml
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from mm_excitor.cli import run_cli
from tasks import get_task
from tasks.run import train


def main(argv: Sequence[str]) -> dict:
    """Train then evaluate; returns the run summary (with `eval` scores)."""
    return train(get_task("scienceqa"), argv)


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
