"""A format-following task over the one-object shapes images: answer in the JSON schema {"colour", "shape"}.

DELIA's ablation (bench/delia.py) tunes a low-resource slice of it (data.train_limit) and evaluates under
instruction paraphrases never seen in training: format validity and answer accuracy (eval/shapes_json.py).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.datasets import ShapesJsonDataset
from data.mix import DeliaMixConfig
from data.paraphrases import ParaphraseConfig, load_paraphrases
from data.shapes_json import PARAPHRASE_SET, load_shapes_json
from eval.shapes_json import score_answers_file, write_answers
from mm_excitor.factory import ModelConfig
from mm_excitor.generation import Decoding
from mm_excitor.train import TrainConfig
from tasks.base import COMMON_FREE_KEYS, Task, TaskData, VisualSource, data_fingerprint


@dataclass
class ShapesJsonDataConfig:
    """The shapes set's Karpathy file (one object per image, captions "a {colour} {shape}")."""

    annotations: str = ""
    """dataset_coco.json of a shapes set made with --difficulty simple."""
    image_root: str = ""
    train_split: str = "train"
    val_split: str | None = "val"
    eval_split: str = "test"
    train_limit: int | None = None
    """Keep a seeded sample of this many training images (the low-resource slice); None keeps all."""
    eval_limit: int | None = None
    """Evaluate a seeded sample of this many images of the eval split (CPU budgets); None: the whole split."""
    limit_seed: int = 0
    feature_cache: str | None = None
    max_length: int = 96
    on_bad_image: str = "error"
    paraphrases: ParaphraseConfig = field(default_factory=ParaphraseConfig)
    delia: DeliaMixConfig = field(default_factory=DeliaMixConfig)


@dataclass
class ShapesJsonRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: ShapesJsonDataConfig = field(default_factory=ShapesJsonDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=24))
    evaluate: bool = True
    """After training: answer the eval split with the images and without them, and score both."""


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
                        "data.eval_split", "data.eval_limit")

    def build_data(self, config: ShapesJsonRunConfig, visual: VisualSource,
                   splits: Iterable[str] = ("train", "val", "eval")) -> ShapesJsonData:
        data, splits = config.data, set(splits)
        instruction = load_paraphrases(PARAPHRASE_SET).canonical
        kwargs = {"image_transform": visual.image_transform, "visual_features": visual.visual_features,
                  "on_bad_image": data.on_bad_image, "instruction": instruction}

        def split(name: str | None, wanted: str, limit: int | None = None) -> ShapesJsonDataset | None:
            if not name or wanted not in splits:
                return None
            return ShapesJsonDataset(load_shapes_json(data.annotations, data.image_root, name, limit,
                                                      data.limit_seed), **kwargs)

        train = split(data.train_split, "train", data.train_limit)
        val, test = split(data.val_split, "val"), split(data.eval_split, "eval", data.eval_limit)
        identity = data_fingerprint([e.image_key, e.colour, e.shape] for e in train.examples) if train else {}
        truth = {e.image_id: (e.colour, e.shape) for e in test.examples} if test else None
        some = train or val or test
        return ShapesJsonData(train, val, test, blank=some.blank() if some is not None else {}, identity=identity,
                              truth=truth)

    def write_outputs(self, records: list[dict], path: Path) -> None:
        write_answers(records, path)

    def score(self, outputs: Path, config: Any, data: ShapesJsonData, out_dir: Path, decoding: Decoding,
              allow_subset: bool = False) -> dict[str, float]:
        return score_answers_file(outputs, data.truth, out_dir, allow_subset).metrics()
