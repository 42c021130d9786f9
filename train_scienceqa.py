"""Train on ScienceQA (QCM-A by default), then score the eval split with the official breakdown, with the images and
without them (the image-blind control).

    python train_scienceqa.py --config configs/scienceqa_llama7b.yaml [key=value ...]
    torchrun --nproc_per_node 8 train_scienceqa.py --config configs/scienceqa_llama7b.yaml
"""
import sys

from mm_excitor.cli import run_cli
from tasks.run import train_command

main = train_command("scienceqa")

if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
