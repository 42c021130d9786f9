"""`python -m tasks.generate TASK`: a trained run's outputs for one split (the task's official file), sharded and
resumable, scored with `--score`.

    python -m tasks.generate caption --config runs/x --output runs/x/eval-cli/captions.json [--score]
    python -m tasks.generate caption --config configs/x.yaml --checkpoint runs/x/checkpoints/best --output R.json \\
        decoding.num_beams=3 decoding.max_new_tokens=30
    torchrun --nproc_per_node 8 -m tasks.generate scienceqa --config runs/x --output answers.jsonl

Decoding settings come from the run config's `decoding` section; `decoding.KEY=VALUE` arguments override them,
each read as the type of its `Decoding` field. Any other `KEY=VALUE` overrides the run config, as for training.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from data.datasets import ImageBlind
from eval.generation import generate_outputs
from mm_excitor.cli import run_cli
from mm_excitor.decoding import Decoding
from mm_excitor.recipe import ConfigError
from mm_excitor.train import DistInfo, cleanup_distributed
from tasks import TASKS, get_task
from tasks.run import format_comparison, load_run, read_run_config

DECODING_PREFIX = "decoding."
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


def decoding_with(decoding: Decoding, pairs: Sequence[str]) -> Decoding:
    """`decoding` with `decoding.KEY=VALUE` pairs applied, each VALUE read as the annotated type of the `Decoding`
    field KEY (bool, int, float, str, or one of them or None); an unknown KEY is an error listing the valid ones."""
    hints = typing.get_type_hints(Decoding)
    names = [field.name for field in dataclasses.fields(Decoding)]
    given: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        name = key.removeprefix(DECODING_PREFIX)
        if not sep or name not in names:
            raise ConfigError(f"unknown decoding setting {pair!r}; valid: "
                              + ", ".join(f"{DECODING_PREFIX}{n}=VALUE" for n in names))
        given[name] = _typed(text, hints[name], key)
    return dataclasses.replace(decoding, **given)


def _typed(text: str, annotation: Any, key: str) -> Any:
    """`text` as a value of `annotation`."""
    arms = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arms = [arm for arm in typing.get_args(annotation) if arm is not type(None)]
        if text.strip().lower() in _NONE:
            return None
    kind = arms[0] if len(arms) == 1 else None
    word = text.strip().lower()
    if kind is bool and word in _TRUE | _FALSE:
        return word in _TRUE
    try:
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        pass
    raise ConfigError(f"{key}={text!r}: expected {getattr(annotation, '__name__', annotation)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS), help="the task the run was trained by")
    parser.add_argument("--config", type=Path, required=True,
                        help="the config YAML the run was trained with, or the run's output_dir (its stored config)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="adapter directory (runs/x/checkpoints/best or step-k), or an output_dir (its latest); "
                             "default: --config when that is an output_dir")
    parser.add_argument("--split", default=None, help="eval split (default: the config's data.eval_split)")
    parser.add_argument("--output", type=Path, required=True, help="final output file (parts go next to it)")
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
                        help="decoding.KEY=VALUE (a Decoding field), or any other run config key, e.g. "
                             "model.language_model=/other/path/of/the/same/model")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Generate this rank's shard of a split with a trained adapter; the merging rank scores it if asked."""
    args = build_parser().parse_intermixed_args(argv)
    task = get_task(args.task)
    decoding_pairs = [pair for pair in args.overrides if pair.startswith(DECODING_PREFIX)]
    overrides = [pair for pair in args.overrides if not pair.startswith(DECODING_PREFIX)]
    try:
        config = read_run_config(task, args.config, overrides)
        decoding = decoding_with(config.decoding, decoding_pairs)
        run = load_run(task, config, args.checkpoint if args.checkpoint is not None else args.config,
                       split=args.split, device=args.device)
        rank, world_size = _shard(args, run.dist)
        dataset = ImageBlind(run.dataset) if args.image_blind else run.dataset
        source = {"adapter": run.adapter_fingerprint, "split": run.split, "images": not args.image_blind}
        print(f"{task.name} generate: rank {rank}/{world_size}, split {run.split!r} ({len(dataset)} items), "
              f"checkpoint {run.checkpoint} ({run.adapter_fingerprint}), {decoding}", file=sys.stderr)
        with torch.no_grad():
            merged = generate_outputs(run.model, dataset, run.collator, task=task.name, id_key=task.id_key,
                                      decoding=decoding, output=args.output, write_output=task.write_outputs,
                                      resume=args.resume, rank=rank, world_size=world_size, source=source)
        if merged is None:
            print(f"rank {rank}: shard written; another rank merges", file=sys.stderr)
            return
        print(f"wrote {merged}")
        if args.score:
            metrics = task.score(merged, run.config, run.data, args.score_dir or merged.parent, decoding,
                                 allow_subset=args.allow_subset)
            print(format_comparison({"image" if not args.image_blind else "blind": metrics}))
    finally:
        cleanup_distributed()


def _shard(args: argparse.Namespace, dist: DistInfo) -> tuple[int, int]:
    if dist.world_size > 1:  # torchrun: the process group decides
        given = (args.rank, args.world_size)
        if given != (None, None) and given != (dist.rank, dist.world_size):
            raise ValueError(f"--rank/--world-size {given} disagree with torchrun's {dist.rank}/{dist.world_size}")
        return dist.rank, dist.world_size
    rank = args.rank if args.rank is not None else int(os.environ.get("RANK", 0))
    world_size = args.world_size if args.world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    return rank, world_size


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
