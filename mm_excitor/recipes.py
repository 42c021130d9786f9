"""Whole-run configs for the two tasks: model + data + training + decoding, loaded from YAML with overrides."""
from __future__ import annotations

from dataclasses import dataclass, field

from .factory import ModelConfig
from .train.config import TrainConfig


@dataclass
class DecodingConfig:
    """Decoding settings reported next to every score (LAVIS-style: fixed and written down)."""

    batch_size: int = 16
    num_beams: int = 1
    max_new_tokens: int = 30
    min_new_tokens: int = 0


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


@dataclass
class ScienceQADataConfig:
    """ScienceQA: problems.json, pid_splits.json and images/{split}/{pid}/image.png under `root`."""

    root: str = ""
    train_split: str = "train"
    val_split: str | None = "val"
    eval_split: str = "test"
    prompt_format: str = "QCM-A"
    feature_cache: str | None = None
    max_length: int = 512
    on_bad_image: str = "error"


@dataclass
class CaptionRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    evaluate: bool = True
    """After training: caption the eval split, score it, and score the image-blind control next to it."""


@dataclass
class ScienceQARunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: ScienceQADataConfig = field(default_factory=ScienceQADataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: DecodingConfig = field(default_factory=lambda: DecodingConfig(max_new_tokens=12))
    evaluate: bool = True
