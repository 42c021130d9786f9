"""What every task shares at run time: training then evaluating (`train_caption.py`, `train_scienceqa.py`), and
loading a trained run for evaluation (`python -m tasks.generate`, `python -m tasks.probe`, notebooks).

    run = load_run("caption", "runs/demo")             # config and latest adapter of the run, its eval split
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.datasets import ParaphrasedDataset
from data.mix import MixedDataset, delia_items
from data.paraphrases import load_paraphrases
from data.sampler import ResumableSampler
from mm_excitor.adapter_io import ADAPTER_CONFIG_NAME, load_adapter
from mm_excitor.factory import create_model
from mm_excitor.feature_cache import FeatureCache
from mm_excitor.identity import state_fingerprint
from mm_excitor.language_model import trainable_state_dict
from mm_excitor.io import atomic_write_json, read_json
from mm_excitor.vision_language import VisionLanguageModel
from mm_excitor.recipe import ConfigError, from_dict, load_config, parse_args, to_dict
from mm_excitor.train import DistInfo, Trainer, cleanup_distributed, init_distributed, seed_everything
from mm_excitor.train.checkpoints import CHECKPOINTS, find_latest
from mm_excitor.train.distributed import unsharded
from mm_excitor.train.reporting import SUMMARY_FILE
from mm_excitor.train.state import STATE_JSON
from mm_excitor.train.trainer import RUN_FILE
from tasks import TASKS, get_task
from tasks.base import Task, TaskData, VisualSource, data_fingerprint


def eval_dir(output_dir: str | Path, step: int) -> Path:
    """Where a training run's own evaluation of its step-`step` weights goes: one folder per step, so that a run
    extended by resuming evaluates its new weights instead of resuming the old weights' outputs."""
    return Path(output_dir) / "eval" / f"step-{step}"


def build(task: Task, config: Any, device: torch.device, splits: Sequence[str]) -> tuple[VisionLanguageModel, TaskData]:
    """The model of `config.model` (online encoder, or none when a feature cache provides the tokens) and the
    task's datasets for `splits`."""
    features = FeatureCache(config.data.feature_cache) if config.data.feature_cache else None
    model = create_model(config.model, feature_cache=features, device=device)
    visual = VisualSource(None if features else model.vision.preprocess, features)
    return model, prepare_data(task, config, task.build_data(config, visual, splits))


def prepare_data(task: Task, config: Any, data: TaskData) -> TaskData:
    """The data stages every task and method shares, after `build_data`: the task instruction paraphrased per
    example (`data.paraphrases`: training paraphrases for the training split, unseen ones or the canonical text
    for validation and evaluation), then DELIA's mix (`data.delia`: R x |task| text-only self-sampled items after
    the task items). The DELIA items join the data identity, so a run resumed with another mix is refused."""
    paraphrases = config.data.paraphrases
    train, val, test = data.train, data.val, data.eval
    if paraphrases.name:
        sets = load_paraphrases(paraphrases.name)

        def wrap(dataset: Any, split: str) -> Any:
            return None if dataset is None else ParaphrasedDataset(dataset, sets, split, task.id_key, paraphrases.seed)

        train = wrap(train, "train")
        if paraphrases.eval == "unseen":
            val, test = wrap(val, "eval"), wrap(test, "eval")
    identity = data.identity
    if train is not None:
        items = delia_items(config.data.delia, len(train))
        if items:
            train = MixedDataset(train, items)
            identity = {**identity, "delia": data_fingerprint([i["meta"]["delia_id"], i["prompt"], i["target"]]
                                                              for i in items)}
    return dataclasses.replace(data, train=train, val=val, eval=test, identity=identity)


def train(task: Task, argv: Sequence[str]) -> dict[str, Any]:
    """`train_<task>.py --config recipe.yaml [key=value ...]`: train, then evaluate with the image-blind control."""
    config = parse_args(task.config_class, argv)
    dist = init_distributed(config.train.device)
    seed_everything(config.train.seed)  # before anything random is built: same command, same initial adapter
    model, data = build(task, config, dist.device, ("train", "val", "eval"))
    collator = task.collator(model.tokenizer, config, data)
    sampler = ResumableSampler(len(data.train), seed=config.train.seed, rank=dist.rank,
                               world_size=dist.world_size, drop_last=config.train.drop_last)
    has_samples = data.eval is not None or data.val is not None
    trainer = Trainer(
        model, data.train, collator, sampler, config.train, val_dataset=data.val,
        sample_fn=(lambda m: task.sample(m, data, collator, config.decoding)) if has_samples else None,
        run_config=to_dict(config), resume_free_keys=task.resume_free_keys, data_identity=data.identity,
    )
    summary = trainer.fit(config.train.resume)
    if config.evaluate and data.eval is not None:
        model.eval()
        with unsharded(trainer.wrapped), torch.no_grad():
            table = task.evaluate(model, config, data, collator, config.decoding,
                                  eval_dir(config.train.output_dir, summary["steps"]),
                                  adapter_fingerprint=trainer.adapter_fingerprint, rank=dist.rank,
                                  world_size=dist.world_size)
        if table is not None:
            summary["eval"], summary["eval_protocol"] = table, task.protocol(config)
            atomic_write_json(Path(config.train.output_dir) / SUMMARY_FILE, summary)
            clip = config.model.vision.pretrained or "RANDOM-INIT"
            print(f"\n{task.name} scores on the {config.data.eval_split} split, {summary['eval_protocol']} "
                  f"(CLIP: {clip}):")
            print(format_comparison(table))
    cleanup_distributed()
    return summary


def train_command(name: str) -> Callable[[Sequence[str]], dict[str, Any]]:
    """The `main(argv)` of `train_<name>.py`: train the task `name`, then evaluate; it returns the run summary (with
    `eval` scores)."""
    return lambda argv: train(get_task(name), argv)


def format_comparison(table: dict[str, dict[str, float | None]]) -> str:
    """Markdown table of a task's headline metrics (as papers report them) per run: with images, image-blind."""
    names = list(next(iter(table.values())))
    lines = ["| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {run} | " + " | ".join("-" if metrics[n] is None else f"{metrics[n]:.1f}" for n in names) + " |"
              for run, metrics in table.items()]
    return "\n".join(lines)


# --- a trained run, for evaluation ----------------------------------------------------------------------------------

@dataclass
class LoadedRun:
    """A trained model with its adapter loaded, in eval mode, and the eval split of its config."""

    task: Task
    config: Any
    """The run config, with data.eval_split = split."""
    model: VisionLanguageModel
    data: TaskData
    collator: Any
    split: str
    checkpoint: Path
    adapter_fingerprint: str
    dist: DistInfo

    @property
    def dataset(self):
        """The eval items of `split`."""
        return self.data.eval


def read_run_config(task: Task, source: str | Path, overrides: Sequence[str] = ()) -> Any:
    """The run config of `task` from `source`, then `key=value` overrides.

    `source` is a recipe YAML (the `--config` the run was trained with), a run's output_dir (the run config the
    trainer stored in train_config.json, else in its latest checkpoint), a checkpoint directory (the run config in
    its trainer_state.json), or either JSON file itself.
    """
    source = Path(source)
    try:
        if source.is_dir():
            return from_dict(task.config_class, _stored_run_config(source), overrides)
        if source.suffix == ".json":
            return from_dict(task.config_class, _run_config_of(source), overrides)
        return load_config(task.config_class, source, overrides)
    except ConfigError:
        other = next((t for t in TASKS.values() if t is not task and _fits(t, source)), None)
        if other is not None:
            raise ConfigError(f"{source} is a {other.name} run config; use `python -m tasks.generate {other.name}`") from None
        raise


def _fits(task: Task, source: Path) -> bool:
    try:
        if source.is_dir():
            from_dict(task.config_class, _stored_run_config(source))
        elif source.suffix == ".json":
            from_dict(task.config_class, _run_config_of(source))
        else:
            load_config(task.config_class, source)
        return True
    except (ConfigError, OSError, ValueError):
        return False


def _run_config_of(path: Path) -> dict[str, Any]:
    """The run config inside a train_config.json / trainer_state.json the trainer wrote."""
    document = read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("run_config"), dict):
        raise ConfigError(f"{path} holds no run config; pass the config YAML the run was trained with")
    return document["run_config"]


def _stored_run_config(directory: Path) -> dict[str, Any]:
    candidates = [directory / RUN_FILE, directory / STATE_JSON]
    latest = find_latest(directory)
    if latest is not None:
        candidates.append(latest / STATE_JSON)
    for path in candidates:
        if path.is_file():
            return _run_config_of(path)
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


def load_run(
    task: str | Task,
    config: str | Path | Any,
    checkpoint: str | Path | None = None,
    *,
    split: str | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> LoadedRun:
    """Build the model of `config` (a path as for read_run_config, or a run config object), load the adapter at
    `checkpoint` (default: `config` itself when it is an output_dir or checkpoint directory) and build the eval
    split `split` (default: the config's `data.eval_split`) and nothing else: the training split is not read.

    A checkpoint of another method, trained on another base model or with other hyper-parameters is refused with
    load_adapter's message. Under torchrun this joins the process group (`device`: auto | cpu | cuda, default the
    config's).
    """
    task = get_task(task) if isinstance(task, str) else task
    if isinstance(config, (str, Path)):
        if checkpoint is None and Path(config).is_dir():
            checkpoint = config
        config = read_run_config(task, config, overrides)
    elif overrides:
        raise ValueError("overrides apply to a config read from a file; change the config object instead")
    if not isinstance(config, task.config_class):
        raise TypeError(f"a {task.name} run needs a {task.config_class.__name__}, got {type(config).__name__}")
    if checkpoint is None:
        raise ValueError("no checkpoint: pass --checkpoint (an adapter directory or a run output_dir), or pass the "
                         "run's output_dir as --config")
    checkpoint = resolve_checkpoint(checkpoint)
    split = split or config.data.eval_split
    if not split:
        raise ValueError("no split: pass --split (the config's data.eval_split is empty)")
    config = task.for_split(config, split)
    dist = init_distributed(device or config.train.device)
    model, data = build(task, config, dist.device, ("eval",))
    load_adapter(model, checkpoint)
    model.eval()
    if data.eval is None or len(data.eval) == 0:
        raise ValueError(f"split {split!r} of the {task.name} data has no items")
    fingerprint = state_fingerprint(trainable_state_dict(model))
    return LoadedRun(task, config, model, data, task.collator(model.tokenizer, config, data), split, checkpoint,
                     fingerprint, dist)
