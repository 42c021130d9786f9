"""COCO-style captioning: official, Karpathy or LAVIS annotation files, CIDEr & co. through pycocoevalcap."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.coco import CaptionImage, CaptionSample, caption_samples, load_caption_splits
from data.datasets import VisualDataset
from data.prompts import CaptionTemplate, caption_example
from eval.caption import write_caption_report
from eval.caption_files import write_results
from mm_excitor.decoding import Decoding
from tasks.base import (
    COMMON_FREE_KEYS, DataConfig, RunConfig, Task, TaskData, VisualSource, blank_of, data_fingerprint,
)


@dataclass
class CaptionDataConfig(DataConfig):
    """COCO-style caption data: any of the official, Karpathy or LAVIS files, images under `image_root`."""

    train_annotations: str = ""
    """Karpathy dataset_coco.json, LAVIS coco_karpathy_train.json or an official captions_*.json."""
    val_annotations: str = ""
    """The file holding the validation split (defaults to eval_annotations, then train_annotations), e.g. LAVIS
    coco_karpathy_val.json next to coco_karpathy_test.json."""
    eval_annotations: str = ""
    """The file holding the evaluation split (defaults to train_annotations, e.g. for dataset_coco.json). Neither
    split is ever read from training data unless asked for by name (data.coco.load_caption_splits)."""
    image_root: str = ""
    train_split: str | None = "train"
    val_split: str | None = "val"
    karpathy_test: str | None = None
    """A Karpathy/LAVIS test file to guard (or filter) a training set that could hold Karpathy test images; not
    needed when train_annotations or eval_annotations is dataset_coco.json or eval_annotations a LAVIS test file."""
    allow_test_overlap: bool = False
    filter_test_overlap: bool = False
    prompt: str | None = None
    """Caption instruction; None uses data.prompts.CAPTION_PROMPT."""


@dataclass
class CaptionRunConfig(RunConfig):
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)


class CaptionTrainDataset(VisualDataset):
    """Caption training: one item per caption, ``prompt``/``target`` from the caption template (CaptionSample
    records; CaptionEvalDataset: one per image)."""

    set_name = "caption training set"

    def __init__(self, records: Sequence[CaptionSample | CaptionImage], *, template: CaptionTemplate = CaptionTemplate(),
                 **visual: Any) -> None:
        self.template = template
        super().__init__(records, **visual)

    def item(self, sample: CaptionSample) -> dict[str, Any]:
        prompt, target = caption_example(sample.caption, self.template)
        return {"prompt": prompt, "target": target, "has_image": True,
                "meta": {"image_id": sample.image_id, "image_key": sample.image_key}}


class CaptionEvalDataset(CaptionTrainDataset):
    """Caption evaluation: one item per image (CaptionImage records), with its references and COCO id in ``meta``."""

    set_name = "caption evaluation set (its scores then cover fewer images)"

    def item(self, image: CaptionImage) -> dict[str, Any]:
        return {"prompt": self.template.prompt, "has_image": True,
                "meta": {"image_id": image.image_id, "image_key": image.image_key,
                         "references": list(image.references)}}


@dataclass
class CaptionData(TaskData):
    references: dict[int, list[str]] | None = None
    """Caption references of the eval split (image id -> captions), for scoring."""


class CaptionTask(Task):
    name = "caption"
    config_class = CaptionRunConfig
    id_key = "image_id"
    output_name = "captions.json"
    resume_free_keys = (*COMMON_FREE_KEYS, "data.train_annotations", "data.val_annotations", "data.eval_annotations",
                        "data.image_root", "data.val_split", "data.karpathy_test")

    def build_data(self, config: CaptionRunConfig, visual: VisualSource,
                   splits: Iterable[str] = ("train", "val", "eval")) -> CaptionData:
        data = config.data
        splits = set(splits)
        kwargs = {**visual.dataset_options(data.on_bad_image),
                  "template": CaptionTemplate(prompt=data.prompt) if data.prompt else CaptionTemplate()}
        splits_of = load_caption_splits(
            data.image_root, data.train_annotations, train_split=data.train_split,
            val_annotations=data.val_annotations or None, val_split=data.val_split if "val" in splits else None,
            eval_annotations=data.eval_annotations or None, eval_split=data.eval_split if "eval" in splits else None,
            karpathy_test=data.karpathy_test, allow_test_overlap=data.allow_test_overlap,
            filter_test_overlap=data.filter_test_overlap, with_training="train" in splits,
        )
        train = CaptionTrainDataset(splits_of.train, **kwargs) if splits_of.train is not None else None
        identity = data_fingerprint([s.image_key, s.caption] for s in train.records) if train is not None else {}
        # validation loss needs (prompt, target) pairs: one per reference caption
        val = CaptionTrainDataset(caption_samples(splits_of.val), **kwargs) if splits_of.val else None
        test = CaptionEvalDataset(splits_of.eval, **kwargs) if splits_of.eval else None
        references = {image.image_id: list(image.references) for image in splits_of.eval} if splits_of.eval else None
        return CaptionData(train, val, test, blank=blank_of(train, val, test), identity=identity,
                           references=references)

    def for_split(self, config: CaptionRunConfig, split: str) -> CaptionRunConfig:
        """Evaluating the validation split reads it from its own file when the config names one."""
        data = config.data
        eval_annotations = data.val_annotations if split == data.val_split and data.val_annotations else (
            data.eval_annotations)
        return dataclasses.replace(config, data=dataclasses.replace(data, eval_split=split,
                                                                    eval_annotations=eval_annotations))

    def write_outputs(self, records: list[dict], path: Path) -> None:
        """The official results file; whitespace (newlines included, which break PTB tokenisation) collapsed."""
        write_results([{"image_id": r["id"], "caption": " ".join(r["text"].split())} for r in records], path)

    def score(self, outputs: Path, config: Any, data: CaptionData, out_dir: Path, decoding: Decoding,
              allow_subset: bool = False) -> dict[str, float]:
        from eval.caption_metrics import score_captions  # pycocoevalcap: needed to score, not to train or generate

        scores = score_captions(outputs, data.references, allow_subset=allow_subset, workdir=out_dir)
        write_caption_report(scores, out_dir, decoding=decoding.as_dict(), sources={"results": str(outputs)})
        return {name: 100 * value for name, value in scores.metrics.items()}  # x100, as papers report them
