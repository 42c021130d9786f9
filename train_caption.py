"""Train a captioner (COCO-style captions), then score it next to its image-blind control.

    python train_caption.py --config configs/coco_llama7b.yaml [key=value ...]
    torchrun --nproc_per_node 8 train_caption.py --config configs/coco_llama7b.yaml
"""
import sys

from mm_excitor.cli import run_cli
from tasks.run import train_command

main = train_command("caption")

if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
