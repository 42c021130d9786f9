"""A Task is one benchmark's whole wiring: its run config, its datasets, its collator (training and generation
batches alike), its official output file and its scorer. Everything else (the model, the Trainer, generation,
the image-blind control) is shared and written once, here and in `tasks.run`.

To add a benchmark: subclass Task, implement the abstract methods, register it in `tasks.TASKS`; its training
entry point is `run_cli(lambda argv: train(get_task(name), argv), ...)`, and `python -m tasks.generate NAME` and
`python -m tasks.probe NAME` serve it at once (docs/architecture.md, "Adding a benchmark").
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from data.collate import Collator
from data.datasets import ImageBlind, OnBadImage
from data.mix import DeliaMixConfig
from data.paraphrases import ParaphraseConfig
from eval.generation import EvalDataset, GenerativeModel, generate_outputs
from mm_excitor.methods.excitor.config import NON_ADAPTER_FIELDS
from mm_excitor.factory import ModelConfig
from mm_excitor.decoding import Decoding
from mm_excitor.train import TrainConfig

COMMON_FREE_KEYS = (
    # what is done after training, and how: nothing the training trajectory depends on
    "evaluate", "decoding.*",
    # where the same files live; the model's identity (LM weights fingerprint, encoder weights) and the training
    # data's identity are checked instead
    "model.language_model", "model.vision.pretrained", "model.vision.model_config_file", "data.feature_cache",
    # which split evaluation scores (DataConfig.eval_split) is chosen after training
    "data.eval_split",
    # the DELIA file's items are fingerprinted in the data identity (tasks.run.prepare_data), wherever it lives;
    # the paraphrases of validation and evaluation prompts do not touch the training items
    "data.delia.samples", "data.paraphrases.eval",
    # how the same arithmetic runs, and how the adapter's tensors started (a resumed run restores them):
    # mm_excitor.methods.excitor.config.NON_ADAPTER_FIELDS
    *(f"model.excitor.{name}" for name in NON_ADAPTER_FIELDS),
)
"""Run-config keys that may change when a run of any task is resumed (besides mm_excitor.train.FREE_TRAIN_KEYS)."""


@dataclass
class DataConfig:
    """The `data` section's fields the shared code reads (tasks.run, tasks.generate, Task); a task's data config
    extends it with its own files and splits, and may change a default by declaring the field again."""

    eval_split: str | None = "test"
    """The split evaluation generates for and scores (`python -m tasks.generate --split` picks another)."""
    feature_cache: str | None = None
    """A directory made by `python -m mm_excitor.feature_cache`: train from precomputed CLIP tokens."""
    max_length: int = 64
    """Tokens per row (prompt and target), the collator's truncation limit."""
    on_bad_image: str = "error"
    """'error' names the file; 'skip' drops and counts unreadable images."""
    paraphrases: ParaphraseConfig = field(default_factory=ParaphraseConfig)
    delia: DeliaMixConfig = field(default_factory=DeliaMixConfig)


@dataclass
class RunConfig:
    """A task's run config: its `data` section (a DataConfig subclass) next to the shared sections; a task's run
    config redeclares `data` with its own class and `decoding` where its default differs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: Decoding = field(default_factory=Decoding)
    evaluate: bool = True
    """After training: generate for the eval split with the images and without them (the image-blind control) and
    score both."""


@dataclass
class VisualSource:
    """How items get their visual input: an encoder's preprocessing (online) or a feature cache; exactly one."""

    image_transform: Callable | None = None
    visual_features: Mapping[str, torch.Tensor] | None = None

    def dataset_options(self, on_bad_image: OnBadImage) -> dict[str, Any]:
        """The keyword arguments of a `data.datasets.VisualDataset` reading from this source."""
        return {"image_transform": self.image_transform, "visual_features": self.visual_features,
                "on_bad_image": on_bad_image}


@dataclass
class TaskData:
    """The datasets of one run (None for splits not asked for) and what identifies the training data."""

    train: Dataset | None
    val: Dataset | None
    eval: EvalDataset | None
    blank: dict[str, torch.Tensor]
    """The zero image (or visual tokens) for a batch row without one: the collator's `blank`."""
    identity: dict[str, Any]
    """Identifies the training items (count and fingerprint): a resumed run must train on the same data."""


def blank_of(*datasets: Any) -> dict[str, torch.Tensor]:
    """The zero visual input of the first dataset built (`VisualDataset.blank`), {} when none is."""
    built = next((dataset for dataset in datasets if dataset is not None), None)
    return built.blank() if built is not None else {}


def data_fingerprint(records: Iterable[Any]) -> dict[str, Any]:
    """Count and sha256 (16 hex digits) of JSON-able records, in order."""
    digest, count = hashlib.sha256(), 0
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
        count += 1
    return {"train_items": count, "sha256": digest.hexdigest()[:16]}


class Task(abc.ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[RunConfig]]
    """The run config dataclass: a RunConfig whose `data` is the task's DataConfig."""
    id_key: ClassVar[str]
    """The id of an item in its `meta` (image_id, pid), one output per id."""
    output_name: ClassVar[str]
    """The official output file a generation pass writes (captions.json, answers.jsonl)."""
    resume_free_keys: ClassVar[tuple[str, ...]] = COMMON_FREE_KEYS

    @abc.abstractmethod
    def build_data(self, config: Any, visual: VisualSource, splits: Iterable[str] = ("train", "val", "eval")) -> TaskData:
        """The datasets of `config.data` for the named splits only (evaluation never reads the training split)."""

    @abc.abstractmethod
    def write_outputs(self, records: list[dict], path: Path) -> None:
        """The official output file from merged generation records `{"index", "id", "prompt", "text"}`."""

    @abc.abstractmethod
    def score(self, outputs: Path, config: Any, data: TaskData, out_dir: Path, decoding: Decoding,
              allow_subset: bool = False) -> dict[str, float]:
        """Score an output file of the eval split, write the report into `out_dir`, return the headline metrics on
        the scale papers report them (CIDEr 146.1, accuracy 88.4)."""

    def protocol(self, config: Any) -> str:
        """How the scores are made, printed and stored next to them (a task with one protocol: its scorer's)."""
        return "official scorer"

    def for_split(self, config: Any, split: str) -> Any:
        """The run config that evaluates `split` (its data section's eval split set to it)."""
        return dataclasses.replace(config, data=dataclasses.replace(config.data, eval_split=split))

    def collator(self, tokenizer: Any, config: Any, data: TaskData) -> Collator:
        return Collator(tokenizer, config.data.max_length, blank=data.blank)

    def evaluate(
        self, model: GenerativeModel, config: Any, data: TaskData, collator: Collator, decoding: Decoding,
        out_dir: Path, *, adapter_fingerprint: str, rank: int = 0, world_size: int = 1, allow_subset: bool = False,
    ) -> dict[str, dict[str, float]] | None:
        """Generate for the eval split with the images and without them (the image-blind control: the same model,
        images removed), and score both. Every rank runs both passes; the merging rank scores and returns
        {"image": metrics, "blind": metrics}, the others None. Outputs left by an interrupted call are reused
        only if they came from the same adapter weights."""
        table = {}
        for run, dataset in (("image", data.eval), ("blind", ImageBlind(data.eval))):
            source = {"adapter": adapter_fingerprint, "images": run == "image"}
            metrics = self.evaluate_run(model, config, data, dataset, collator, decoding, out_dir / run, source=source,
                                        rank=rank, world_size=world_size, allow_subset=allow_subset)
            if metrics is not None:
                table[run] = metrics
        return table or None

    def evaluate_run(
        self, model: GenerativeModel, config: Any, data: TaskData, dataset: EvalDataset, collator: Collator,
        decoding: Decoding, out_dir: Path, *, source: dict[str, Any], rank: int, world_size: int, allow_subset: bool,
    ) -> dict[str, float] | None:
        """One pass of `evaluate`: generate `dataset`'s outputs (sharded, resumable), then, on the merging rank,
        score them into `out_dir` and return the headline metrics (None on the other ranks)."""
        merged = generate_outputs(
            model, dataset, collator, task=self.name, id_key=self.id_key, decoding=decoding,
            output=out_dir / self.output_name, write_output=self.write_outputs, rank=rank, world_size=world_size,
            source=source,
        )
        return None if merged is None else self.score(merged, config, data, out_dir, decoding, allow_subset)

    def sample(self, model: Any, data: TaskData, collator: Collator, decoding: Decoding, n: int = 4) -> list[dict]:
        """A few generations from the eval (or validation) split, logged during training."""
        source = data.eval if data.eval is not None else data.val
        items = [item for item in (source[i] for i in range(min(n, len(source)))) if item is not None]
        if not items:
            return []
        batch = collator.prompts(items).to(model.device)
        texts = model.generate(**batch.inputs, decoding=decoding)
        return [{self.id_key: item["meta"].get(self.id_key), "text": text} for item, text in zip(items, texts)]
