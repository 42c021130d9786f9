"""From a run's data config to the datasets a task trains and evaluates on (the entry scripts' wiring)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from data.coco import caption_samples, load_caption_splits
from data.datasets import CaptionEvalDataset, CaptionTrainDataset, ScienceQADataset
from data.prompts import CaptionTemplate
from data.scienceqa import load_scienceqa


@dataclass
class TaskData:
    train: Dataset
    val: Dataset | None
    eval: Dataset | None
    references: dict[int, list[str]] | None = None
    """Caption references of the eval split (image id -> captions), for scoring."""


def caption_data(
    config, image_transform: Callable | None, visual_features: Mapping[str, torch.Tensor] | None
) -> TaskData:
    """`config` is a mm_excitor.recipes.CaptionDataConfig."""
    visual = {"image_transform": image_transform, "visual_features": visual_features,
              "on_bad_image": config.on_bad_image}
    template = CaptionTemplate(prompt=config.prompt) if config.prompt else CaptionTemplate()
    splits = load_caption_splits(
        config.image_root, config.train_annotations, train_split=config.train_split,
        val_annotations=config.val_annotations or None, val_split=config.val_split,
        eval_annotations=config.eval_annotations or None, eval_split=config.eval_split,
        karpathy_test=config.karpathy_test, allow_test_overlap=config.allow_test_overlap,
        filter_test_overlap=config.filter_test_overlap,
    )
    samples, val_images, test_images = splits.train, splits.val, splits.eval
    val = None
    if val_images:
        # validation loss needs (prompt, target) pairs: one per reference caption
        val = CaptionTrainDataset(caption_samples(val_images), template=template, **visual)
    test = CaptionEvalDataset(test_images, template=template, **visual) if test_images else None
    references = {image.image_id: list(image.references) for image in test_images} if test_images else None
    return TaskData(CaptionTrainDataset(samples, template=template, **visual), val, test, references)


def scienceqa_data(
    config, image_transform: Callable | None, visual_features: Mapping[str, torch.Tensor] | None
) -> TaskData:
    """`config` is a mm_excitor.recipes.ScienceQADataConfig."""
    visual = {"image_transform": image_transform, "visual_features": visual_features,
              "on_bad_image": config.on_bad_image, "fmt": config.prompt_format}

    def split(name: str | None) -> ScienceQADataset | None:
        return None if name is None else ScienceQADataset(load_scienceqa(config.root, name), **visual)

    return TaskData(split(config.train_split), split(config.val_split), split(config.eval_split))
