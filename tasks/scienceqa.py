"""ScienceQA: problems.json + pid_splits.json, the official prompt formats, accuracy with the official breakdown."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.datasets import ImageRef, VisualDataset
from data.prompts import SCIENCEQA_FORMATS
from data.scienceqa import ScienceQAProblem, build_example, load_scienceqa, problem_meta
from eval.scienceqa import score_predictions_file, write_answers
from eval.scienceqa_likelihood import LIKELIHOOD_FORMAT, PROTOCOL, evaluate_likelihood
from mm_excitor.decoding import Decoding
from tasks.base import (
    COMMON_FREE_KEYS, DataConfig, RunConfig, Task, TaskData, VisualSource, blank_of, data_fingerprint,
)


@dataclass
class ScienceQADataConfig(DataConfig):
    """ScienceQA: problems.json, pid_splits.json and images/{split}/{pid}/image.png under `root`."""

    max_length: int = 512
    root: str = ""
    train_split: str = "train"
    val_split: str | None = "val"
    prompt_format: str = "QCM-A"
    """QCM-A (the official letter protocol), CQM-A, QCM-LEA, or QCM-option: answers are the options' texts and
    evaluation ranks the options by likelihood (eval.scienceqa_likelihood; a second protocol, reported as such)."""


@dataclass
class ScienceQARunConfig(RunConfig):
    data: ScienceQADataConfig = field(default_factory=ScienceQADataConfig)
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=12))


class ScienceQADataset(VisualDataset):
    """ScienceQA items in prompt format ``fmt``; text-only questions get ``has_image=False`` and no image.
    ``target`` is always present (the trainer uses it; the evaluator may ignore it)."""

    set_name = "ScienceQA set"

    def __init__(self, problems: Sequence[ScienceQAProblem], *, fmt: str = "QCM-A", **visual: Any) -> None:
        if fmt not in SCIENCEQA_FORMATS:  # fail now, not in a worker
            raise ValueError(f"unknown ScienceQA prompt format {fmt!r}; choose one of {', '.join(SCIENCEQA_FORMATS)}")
        self.fmt = fmt
        super().__init__(problems, **visual)

    def image(self, problem: ScienceQAProblem) -> ImageRef:
        return f"pid {problem.pid}", problem.image_path, problem.image_key

    def item(self, problem: ScienceQAProblem) -> dict[str, Any]:
        prompt, target = build_example(problem, self.fmt)
        return {"prompt": prompt, "target": target, "has_image": problem.has_image, "meta": problem_meta(problem)}


class ScienceQATask(Task):
    name = "scienceqa"
    config_class = ScienceQARunConfig
    id_key = "pid"
    output_name = "answers.jsonl"
    resume_free_keys = (*COMMON_FREE_KEYS, "data.root", "data.val_split")

    def build_data(self, config: ScienceQARunConfig, visual: VisualSource,
                   splits: Iterable[str] = ("train", "val", "eval")) -> TaskData:
        data, splits = config.data, set(splits)
        kwargs = {**visual.dataset_options(data.on_bad_image), "fmt": data.prompt_format}

        def split(name: str | None, wanted: str) -> ScienceQADataset | None:
            return ScienceQADataset(load_scienceqa(data.root, name), **kwargs) if name and wanted in splits else None

        train, val, test = split(data.train_split, "train"), split(data.val_split, "val"), split(data.eval_split, "eval")
        identity = data_fingerprint([p.pid, p.answer, p.image_key] for p in train.records) if train else {}
        return TaskData(train, val, test, blank=blank_of(train, val, test), identity=identity)

    def protocol(self, config: ScienceQARunConfig) -> str:
        if config.data.prompt_format == LIKELIHOOD_FORMAT:
            return PROTOCOL
        return "official letter protocol (the option letter read from the generated answer)"

    def evaluate_run(
        self, model: Any, config: ScienceQARunConfig, data: TaskData, dataset: Any, collator: Any,
        decoding: Decoding, out_dir: Path, *, source: dict[str, Any], rank: int, world_size: int, allow_subset: bool,
    ) -> dict[str, Any] | None:
        """The letter protocol generates and reads letters (Task.evaluate_run); the likelihood protocol scores every
        option on rank 0 (nothing to generate, nothing to shard)."""
        if config.data.prompt_format != LIKELIHOOD_FORMAT:
            return super().evaluate_run(model, config, data, dataset, collator, decoding, out_dir, source=source,
                                        rank=rank, world_size=world_size, allow_subset=allow_subset)
        if rank != 0:
            return None
        scores = evaluate_likelihood(model, dataset, collator, Path(config.data.root) / "problems.json", out_dir,
                                     split=config.data.eval_split, batch_size=decoding.batch_size,
                                     allow_subset=allow_subset, source=source)
        return {name: accuracy.percent for name, accuracy in scores.categories.items()}

    def write_outputs(self, records: list[dict], path: Path) -> None:
        write_answers(records, path)

    def score(self, outputs: Path, config: ScienceQARunConfig, data: TaskData, out_dir: Path, decoding: Decoding,
              allow_subset: bool = False) -> dict[str, Any]:
        scores = score_predictions_file(outputs, Path(config.data.root) / "problems.json", out_dir,
                                        split=config.data.eval_split, allow_subset=allow_subset)
        return {name: accuracy.percent for name, accuracy in scores.categories.items()}
