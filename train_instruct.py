"""Instruction-tune on Alpaca, chat-messages, ShareGPT or LLaVA files with the model's chat template, then score
the held-out conversations (answer NLL, greedy answers) with the images and without them.

    python train_instruct.py --config configs/instruct_alpaca.yaml [key=value ...]
    python train_instruct.py --config configs/instruct_alpaca.yaml data.train_files=[my_data.jsonl]
"""
import sys

from mm_excitor.cli import run_cli
from tasks.run import train_command

main = train_command("instruct")

if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
