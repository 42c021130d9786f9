"""From a trained run to its eval outputs: the run's config, its adapter and its eval split, plus the `generate`
subcommand that `python -m eval.caption` and `python -m eval.scienceqa` share.

    python -m eval.caption generate --config runs/x --output runs/x/eval-cli/captions.json
    python -m eval.caption generate --config configs/x.yaml --checkpoint runs/x/checkpoints/best --output R.json
    torchrun --nproc_per_node 8 -m eval.caption generate --config runs/x --output R.json

Python (e.g. a notebook):

    run = load_run("caption", "runs/demo")             # config and latest adapter of the run, its eval split
    run.model.generate([run.dataset[0]["prompt"]], ...)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from data.datasets import ImageBlind
from eval.generation import Decoding, EvalDataset
from mm_excitor.checkpoint import ADAPTER_CONFIG_NAME, adapter_fingerprint, load_adapter
from mm_excitor.train import DistInfo, cleanup_distributed, init_distributed
from mm_excitor.train.checkpoints import CHECKPOINTS, find_latest
from mm_excitor.train.recipe import ConfigError, from_dict, parse_overrides, set_dotted
from mm_excitor.train.state import STATE_JSON
from mm_excitor.train.trainer import RUN_FILE

if TYPE_CHECKING:
    from data.builders import TaskData

# The model stack (transformers, open_clip) is imported when a run is loaded, so that `score` starts fast.

TASK_CLI = {"caption": "python -m eval.caption", "scienceqa": "python -m eval.scienceqa"}
DECODING_FIELDS = ("batch_size", "num_beams", "max_new_tokens", "min_new_tokens")


@dataclass(frozen=True)
class Task:
    name: str
    config_class: type
    build_data: Callable[..., TaskData]
    cli: str


def _task(name: str) -> Task:
    from data.builders import caption_data, scienceqa_data
    from mm_excitor.recipes import CaptionRunConfig, ScienceQARunConfig

    tasks = {"caption": (CaptionRunConfig, caption_data), "scienceqa": (ScienceQARunConfig, scienceqa_data)}
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; one of {sorted(tasks)}")
    return Task(name, *tasks[name], TASK_CLI[name])


@dataclass
class LoadedRun:
    """A trained model with its adapter loaded, in eval mode, and the datasets of its config for `split`."""

    task: str
    config: Any  # CaptionRunConfig | ScienceQARunConfig, with data.eval_split = split
    model: Any  # mm_excitor.multimodal.MultimodalExcitor
    data: TaskData
    split: str
    checkpoint: Path
    adapter_fingerprint: str
    dist: DistInfo

    @property
    def dataset(self) -> EvalDataset:
        """The eval items of `split` (data.eval)."""
        return self.data.eval

    @property
    def decoding(self) -> Decoding:
        """The decoding settings of the run's config."""
        return Decoding(**{name: getattr(self.config.decoding, name) for name in DECODING_FIELDS})


# --- config and checkpoint ----------------------------------------------------------------------------------------

def read_run_config(task: str, source: str | Path, overrides: Sequence[str] = ()) -> Any:
    """The run config of `task` from `source`, then `key=value` overrides.

    `source` is a recipe YAML (the `--config` the run was trained with), a run's output_dir (the whole run config
    the trainer stored in train_config.json, else in its latest checkpoint), a checkpoint directory (the run config
    in its trainer_state.json), or either JSON file itself.
    """
    spec = _task(task)
    source = Path(source)
    data = _stored_run_config(source) if source.is_dir() else _read_mapping(source)
    try:
        for key, value in parse_overrides(list(overrides)):
            set_dotted(spec.config_class, data, key, value)
        return from_dict(spec.config_class, data)
    except ConfigError as error:
        other = _task(next(name for name in TASK_CLI if name != spec.name))
        try:
            from_dict(other.config_class, _stored_run_config(source) if source.is_dir() else _read_mapping(source))
        except (ConfigError, ValueError):
            raise ConfigError(f"{source}: {error}") from None
        raise ConfigError(f"{source} is a {other.name} run config; use `{other.cli} generate`") from None


def _read_mapping(path: Path) -> dict[str, Any]:
    """A recipe (YAML or JSON), or a train_config.json / trainer_state.json whose `run_config` is the recipe."""
    if not path.is_file():
        raise FileNotFoundError(f"no config at {path} (pass the run's config YAML, or its output_dir)")
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(loaded).__name__}")
    if "run_config" in loaded:  # written by the trainer
        if not isinstance(loaded["run_config"], dict):
            raise ConfigError(f"{path} holds no run config (the run was not started by train_caption.py or "
                              "train_scienceqa.py); pass the config YAML it was trained with")
        return loaded["run_config"]
    return loaded


def _stored_run_config(directory: Path) -> dict[str, Any]:
    candidates = [directory / RUN_FILE, directory / STATE_JSON]
    latest = find_latest(directory)
    if latest is not None:
        candidates.append(latest / STATE_JSON)
    for path in candidates:
        if path.is_file():
            return _read_mapping(path)
    raise FileNotFoundError(f"{directory} holds no stored run config (looked for {', '.join(map(str, candidates))}); "
                            "pass the config YAML the run was trained with")


def resolve_checkpoint(path: str | Path) -> Path:
    """An adapter directory: `path` itself (step-k, best), or the latest checkpoint of a run's output_dir."""
    path = Path(path)
    if (path / ADAPTER_CONFIG_NAME).is_file():
        return path
    root = path.parent if path.name == CHECKPOINTS else path
    if (root / CHECKPOINTS).is_dir():
        latest = find_latest(root)
        if latest is None:
            raise FileNotFoundError(f"{root / CHECKPOINTS} holds no complete checkpoint yet")
        return latest
    raise FileNotFoundError(f"no checkpoint at {path}: expected a directory with {ADAPTER_CONFIG_NAME} "
                            "(runs/x/checkpoints/best, .../step-k) or a run output_dir (its latest checkpoint)")


# --- the model and the eval split ---------------------------------------------------------------------------------

def load_run(
    task: str,
    config: str | Path | Any,
    checkpoint: str | Path | None = None,
    *,
    split: str | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> LoadedRun:
    """Build the model of `config` (a path as for read_run_config, or a run config object), load the adapter at
    `checkpoint` (default: `config` itself when it is an output_dir or checkpoint directory) and build the eval
    split `split` (default: the config's `data.eval_split`).

    A checkpoint trained on another base model or with another Excitor config is refused with load_adapter's
    message. Under torchrun this joins the process group (`device`: auto | cpu | cuda, default the config's).
    """
    spec = _task(task)
    if isinstance(config, (str, Path)):
        if checkpoint is None and Path(config).is_dir():
            checkpoint = config
        config = read_run_config(task, config, overrides)
    elif overrides:
        raise ValueError("overrides apply to a config read from a file; change the config object instead")
    if not isinstance(config, spec.config_class):
        raise TypeError(f"a {task} run needs a {spec.config_class.__name__}, got {type(config).__name__}")
    if checkpoint is None:
        raise ValueError("no checkpoint: pass --checkpoint (an adapter directory or a run output_dir), or pass the "
                         "run's output_dir as --config")
    checkpoint = resolve_checkpoint(checkpoint)
    split = split or config.data.eval_split
    if not split:
        raise ValueError("no split: pass --split (the config's data.eval_split is empty)")
    # Only the eval split is needed; the training set is still read by the builders (a cheap index, no images).
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, eval_split=split, val_split=None))
    from mm_excitor.pipeline import build_model

    dist = init_distributed(device or config.train.device)
    model, image_transform, features = build_model(config.model, config.data.feature_cache, device=dist.device)
    load_adapter(model, checkpoint)
    model.eval()
    data = spec.build_data(config.data, image_transform, features)
    if data.eval is None or len(data.eval) == 0:
        raise ValueError(f"split {split!r} of the {task} data has no items")
    return LoadedRun(task, config, model, data, split, checkpoint, adapter_fingerprint(model), dist)


# --- the `generate` subcommand ------------------------------------------------------------------------------------

def add_generate_parser(subparsers: Any, task: str, *, help: str) -> argparse.ArgumentParser:
    """The `generate` subcommand of a task's CLI (the same options for both tasks)."""
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
    for name in DECODING_FIELDS:
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


GenerateFn = Callable[..., Path | None]
ScoreFn = Callable[[LoadedRun, Path, Path, dict], int]


def generate_command(args: argparse.Namespace, task: str, generate: GenerateFn, score: ScoreFn) -> int:
    """Run `generate` (generate_captions / generate_answers) on this rank's shard; the merging rank scores if asked
    (`score(run, merged_output, report_dir, cli_args_as_dict)` returns an exit status)."""
    try:
        config = read_run_config(task, args.config, args.overrides)
        decoding = Decoding(**{name: getattr(args, name) if getattr(args, name) is not None
                               else getattr(config.decoding, name) for name in DECODING_FIELDS})
        checkpoint = args.checkpoint if args.checkpoint is not None else args.config
        run = load_run(task, config, checkpoint, split=args.split, device=args.device)
        rank, world_size = _shard(args, run.dist)
    except (ValueError, OSError) as error:  # config, checkpoint, adapter mismatch and data errors
        print(f"error: {error}", file=sys.stderr)
        cleanup_distributed()
        return 2
    try:
        dataset = ImageBlind(run.dataset) if args.image_blind else run.dataset
        source = {"adapter": run.adapter_fingerprint, "split": run.split, "images": not args.image_blind}
        print(f"{task} generate: rank {rank}/{world_size}, split {run.split!r} ({len(dataset)} items), checkpoint "
              f"{run.checkpoint} ({run.adapter_fingerprint}), {decoding}", file=sys.stderr)
        try:
            with torch.no_grad():
                merged = generate(run.model, dataset, batch_size=decoding.batch_size, num_beams=decoding.num_beams,
                                  max_new_tokens=decoding.max_new_tokens, min_new_tokens=decoding.min_new_tokens,
                                  output=args.output, resume=args.resume, rank=rank, world_size=world_size,
                                  source=source)
        except ValueError as error:  # resuming parts made with other settings or from another checkpoint
            print(f"error: {error}", file=sys.stderr)
            return 2
        if merged is None:
            print(f"rank {rank}: shard written; another rank merges", file=sys.stderr)
            return 0
        print(f"wrote {merged}")
        if args.score:
            return score(run, merged, args.score_dir or merged.parent, vars(args))
        return 0
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

