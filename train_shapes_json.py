"""Train the format-following shapes task (answers in JSON), then score it next to its image-blind control.

    python train_shapes_json.py --config configs/shapes_json.yaml [key=value ...]
"""
import sys

from mm_excitor.cli import run_cli
from tasks.run import train_command

main = train_command("shapes_json")

if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
