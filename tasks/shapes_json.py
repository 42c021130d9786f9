"""A format-following task over the one-object shapes images: answer in the JSON schema {"colour", "shape"}.

DELIA's ablation (bench/delia.py) tunes a low-resource slice of it (data.train_limit) and evaluates under
instruction paraphrases never seen in training: format validity and answer accuracy (eval/shapes_json.py).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.datasets import VisualDataset
from data.paraphrases import load_paraphrases
from data.shapes_json import PARAPHRASE_SET, ShapesJsonExample, load_shapes_json, shapes_json_example
from eval.shapes_json import score_answers_file, write_answers
from mm_excitor.decoding import Decoding
from tasks.base import (
    COMMON_FREE_KEYS, DataConfig, RunConfig, Task, TaskData, VisualSource, blank_of, data_fingerprint,
)


@dataclass
class ShapesJsonDataConfig(DataConfig):
    """The shapes set's Karpathy file (one object per image, captions "a {colour} {shape}")."""

    max_length: int = 96
    annotations: str = ""
    """dataset_coco.json of a shapes set made with --difficulty simple."""
    image_root: str = ""
    train_split: str = "train"
    val_split: str | None = "val"
    train_limit: int | None = None
    """Keep a seeded sample of this many training images (the low-resource slice); None keeps all."""
    eval_limit: int | None = None
    """Evaluate a seeded sample of this many images of the eval split (CPU budgets); None: the whole split."""
    limit_seed: int = 0


@dataclass
class ShapesJsonRunConfig(RunConfig):
    data: ShapesJsonDataConfig = field(default_factory=ShapesJsonDataConfig)
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=24))


class ShapesJsonDataset(VisualDataset):
    """The format-following task: one item per image, the instruction prompt and the JSON answer as target
    (always present; the evaluator ignores it). `meta` holds the truth the scorer compares with."""

    set_name = "shapes_json set"

    def __init__(self, examples: Sequence[ShapesJsonExample], *, instruction: str, **visual: Any) -> None:
        self.instruction = instruction
        super().__init__(examples, **visual)

    def item(self, example: ShapesJsonExample) -> dict[str, Any]:
        prompt, target = shapes_json_example(self.instruction, example.colour, example.shape)
        return {"prompt": prompt, "target": target, "has_image": True,
                "meta": {"image_id": example.image_id, "image_key": example.image_key, "colour": example.colour,
                         "shape": example.shape}}


@dataclass
class ShapesJsonData(TaskData):
    truth: dict[int, tuple[str, str]] | None = None
    """(colour, shape) per image id of the eval split."""


class ShapesJsonTask(Task):
    name = "shapes_json"
    config_class = ShapesJsonRunConfig
    id_key = "image_id"
    output_name = "answers.jsonl"
    resume_free_keys = (*COMMON_FREE_KEYS, "data.annotations", "data.image_root", "data.val_split",
                        "data.eval_limit")

    def build_data(self, config: ShapesJsonRunConfig, visual: VisualSource,
                   splits: Iterable[str] = ("train", "val", "eval")) -> ShapesJsonData:
        data, splits = config.data, set(splits)
        instruction = load_paraphrases(PARAPHRASE_SET).canonical
        kwargs = {**visual.dataset_options(data.on_bad_image), "instruction": instruction}

        def split(name: str | None, wanted: str, limit: int | None = None) -> ShapesJsonDataset | None:
            if not name or wanted not in splits:
                return None
            return ShapesJsonDataset(load_shapes_json(data.annotations, data.image_root, name, limit,
                                                      data.limit_seed), **kwargs)

        train = split(data.train_split, "train", data.train_limit)
        val, test = split(data.val_split, "val"), split(data.eval_split, "eval", data.eval_limit)
        identity = data_fingerprint([e.image_key, e.colour, e.shape] for e in train.records) if train else {}
        truth = {e.image_id: (e.colour, e.shape) for e in test.records} if test else None
        return ShapesJsonData(train, val, test, blank=blank_of(train, val, test), identity=identity, truth=truth)

    def write_outputs(self, records: list[dict], path: Path) -> None:
        write_answers(records, path)

    def score(self, outputs: Path, config: Any, data: ShapesJsonData, out_dir: Path, decoding: Decoding,
              allow_subset: bool = False) -> dict[str, float]:
        return score_answers_file(outputs, data.truth, out_dir, allow_subset).metrics()
