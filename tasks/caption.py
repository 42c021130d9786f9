"""COCO-style captioning: official, Karpathy or LAVIS annotation files, CIDEr & co. through pycocoevalcap."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.coco import caption_samples, load_caption_splits
from data.datasets import CaptionEvalDataset, CaptionTrainDataset
from data.prompts import CaptionTemplate
from eval.caption_files import write_results
from eval.report import write_caption_report
from data.mix import DeliaMixConfig
from data.paraphrases import ParaphraseConfig
from mm_excitor.factory import ModelConfig
from mm_excitor.generation import Decoding
from mm_excitor.train import TrainConfig
from tasks.base import COMMON_FREE_KEYS, Task, TaskData, VisualSource, data_fingerprint


@dataclass
class CaptionDataConfig:
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
    eval_split: str | None = "test"
    karpathy_test: str | None = None
    """A Karpathy/LAVIS test file to guard (or filter) a training set that could hold Karpathy test images; not
    needed when train_annotations or eval_annotations is dataset_coco.json or eval_annotations a LAVIS test file."""
    allow_test_overlap: bool = False
    filter_test_overlap: bool = False
    feature_cache: str | None = None
    """A directory made by `python -m mm_excitor.feature_cache`: train from precomputed CLIP tokens."""
    max_length: int = 64
    on_bad_image: str = "error"
    """'error' names the file; 'skip' drops and counts unreadable images."""
    prompt: str | None = None
    """Caption instruction; None uses data.prompts.CAPTION_PROMPT."""
    paraphrases: ParaphraseConfig = field(default_factory=ParaphraseConfig)
    delia: DeliaMixConfig = field(default_factory=DeliaMixConfig)


@dataclass
class CaptionRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: Decoding = field(default_factory=Decoding)
    evaluate: bool = True
    """After training: caption the eval split, score it, and score the image-blind control next to it."""


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
                        "data.image_root", "data.val_split", "data.eval_split", "data.karpathy_test")

    def build_data(self, config: CaptionRunConfig, visual: VisualSource,
                   splits: Iterable[str] = ("train", "val", "eval")) -> CaptionData:
        data = config.data
        splits = set(splits)
        kwargs = {"image_transform": visual.image_transform, "visual_features": visual.visual_features,
                  "on_bad_image": data.on_bad_image,
                  "template": CaptionTemplate(prompt=data.prompt) if data.prompt else CaptionTemplate()}
        splits_of = load_caption_splits(
            data.image_root, data.train_annotations, train_split=data.train_split,
            val_annotations=data.val_annotations or None, val_split=data.val_split if "val" in splits else None,
            eval_annotations=data.eval_annotations or None, eval_split=data.eval_split if "eval" in splits else None,
            karpathy_test=data.karpathy_test, allow_test_overlap=data.allow_test_overlap,
            filter_test_overlap=data.filter_test_overlap, with_training="train" in splits,
        )
        train = CaptionTrainDataset(splits_of.train, **kwargs) if splits_of.train is not None else None
        identity = data_fingerprint([s.image_key, s.caption] for s in train.samples) if train is not None else {}
        # validation loss needs (prompt, target) pairs: one per reference caption
        val = CaptionTrainDataset(caption_samples(splits_of.val), **kwargs) if splits_of.val else None
        test = CaptionEvalDataset(splits_of.eval, **kwargs) if splits_of.eval else None
        references = {image.image_id: list(image.references) for image in splits_of.eval} if splits_of.eval else None
        some = train or val or test
        return CaptionData(train, val, test, blank=some.blank() if some is not None else {}, identity=identity,
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
