"""The command-line shape shared by `python -m eval.caption` and `python -m eval.scienceqa`: `score` scores files
(and imports no model code: no torch), `generate` writes a trained run's outputs for a split (tasks.run)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DECODING_OPTIONS = ("batch_size", "num_beams", "max_new_tokens", "min_new_tokens")
"""Decoding settings (mm_excitor.generation.Decoding fields) a `generate` call may override."""


def add_generate_parser(subparsers: Any, help: str) -> argparse.ArgumentParser:
    """The `generate` subcommand of a task's evaluation CLI (the same options for every task)."""
    parser = subparsers.add_parser(
        "generate", help=help,
        description=f"{help}. Decoding settings come from the run config's `decoding` section unless given here.",
    )
    parser.add_argument("--config", type=Path, required=True,
                        help="the config YAML the run was trained with, or the run's output_dir (its stored config)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="adapter directory (runs/x/checkpoints/best or step-k), or an output_dir (its latest); "
                             "default: --config when that is an output_dir")
    parser.add_argument("--split", default=None, help="eval split (default: the config's data.eval_split)")
    parser.add_argument("--output", type=Path, required=True, help="final output file (parts go next to it)")
    for name in DECODING_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None,
                            help=f"default: the config's decoding.{name}")
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="discard this rank's part file")
    parser.add_argument("--image-blind", action="store_true",
                        help="remove the images (the image-blind control: learnable prompts only)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="default: the config's train.device")
    parser.add_argument("--rank", type=int, default=None,
                        help="shard of a hand-launched run (default: $RANK; under torchrun the process group's)")
    parser.add_argument("--world-size", type=int, default=None, help="number of shards (default: $WORLD_SIZE or 1)")
    parser.add_argument("--score", action="store_true", help="score the merged output against the split's references")
    parser.add_argument("--score-dir", type=Path, default=None, help="report directory (default: next to --output)")
    parser.add_argument("--allow-subset", action="store_true", help="with --score: score a subset, marked as such")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of the run config, e.g. model.language_model=/other/path/of/the/same/model")
    return parser


def generate(task: str, args: argparse.Namespace) -> None:
    from tasks.run import generate_command  # the model stack loads only for this subcommand

    generate_command(task, args)
