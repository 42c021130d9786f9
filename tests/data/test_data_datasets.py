"""Datasets: item dicts of docs/interfaces.md, images loaded in workers, and the bad-image policies."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data.coco import load_caption_images, load_caption_training
from data.collate import Collator
from data.datasets import load_rgb
from data.errors import ImageError
from data.scienceqa import load_scienceqa
from tasks.caption import CaptionEvalDataset, CaptionTrainDataset
from tasks.scienceqa import ScienceQADataset

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
COCO, SQA = SAMPLES / "coco", SAMPLES / "scienceqa"
GRAY_KEY = "val2014/COCO_val2014_000000900005.jpg"  # the camera photo is a grayscale JPEG


def transform(image: Image.Image) -> torch.Tensor:
    """A stand-in for open_clip's preprocess: fixed size, CHW float."""
    assert image.mode == "RGB"
    small = image.resize((8, 8))
    return torch.tensor(list(small.getdata()), dtype=torch.float32).T.reshape(3, 8, 8) / 255


def test_caption_training_items():
    samples = load_caption_training(COCO / "dataset_coco.json", COCO)
    ds = CaptionTrainDataset(samples, image_transform=transform)
    assert len(ds) == 15
    item = ds[0]
    assert item["prompt"] == "Describe the image in one sentence.\nCaption:"
    assert item["target"] == " " + samples[0].caption
    assert item["image"].shape == (3, 8, 8) and item["has_image"] is True
    assert item["meta"] == {"image_id": samples[0].image_id, "image_key": samples[0].image_key}


def test_caption_eval_items_one_per_image_with_references():
    images = load_caption_images(COCO / "annotations" / "captions_val2014.json", COCO)
    ds = CaptionEvalDataset(images, image_transform=transform)
    assert len(ds) == 4
    for i, im in enumerate(images):
        item = ds[i]
        assert "target" not in item
        assert item["meta"] == {"image_id": im.image_id, "image_key": im.image_key, "references": im.references}
    gray = next(i for i, im in enumerate(images) if im.image_key == GRAY_KEY)
    assert Image.open(images[gray].image_path).mode == "L"
    assert ds[gray]["image"].shape == (3, 8, 8)  # converted to RGB


def test_visual_features_are_looked_up_by_image_key():
    images = load_caption_images(COCO / "coco_karpathy_test.json", COCO)
    feats = {im.image_key: torch.full((4, 6), float(im.image_id)) for im in images}
    ds = CaptionEvalDataset(images, visual_features=feats)
    assert ds[1]["visual_tokens"].eq(images[1].image_id).all() and "image" not in ds[1]
    with pytest.raises(ValueError, match="exactly one"):
        CaptionEvalDataset(images, visual_features=feats, image_transform=transform)
    with pytest.raises(ValueError, match="exactly one"):
        CaptionEvalDataset(images)


def test_scienceqa_text_only_items_carry_no_image_and_the_blank_has_the_image_shape():
    ds = ScienceQADataset(load_scienceqa(SQA, "train"), image_transform=transform)
    with_image, text_only = ds[0], ds[2]  # pid 1 has an image, pid 3 only a hint
    assert with_image["has_image"] and with_image["image"].abs().sum() > 0
    assert not text_only["has_image"] and "image" not in text_only
    blank = ds.blank()["image"]
    assert blank.shape == with_image["image"].shape == (3, 8, 8) and blank.eq(0).all()
    assert text_only["target"] == " The answer is B." and text_only["meta"]["pid"] == "3"
    assert text_only["prompt"].startswith("Question: Which change of state happened to the water?\nContext: Maya")
    lea = ScienceQADataset(load_scienceqa(SQA, "train"), fmt="QCM-LEA", image_transform=transform)
    assert lea[2]["target"].endswith("So, the change of state was freezing. The answer is B.")
    with pytest.raises(ValueError, match="unknown ScienceQA prompt format"):
        ScienceQADataset([], fmt="QCM-B", image_transform=transform)


def test_scienceqa_visual_features_blank_is_zero_tokens_of_the_cache_shape():
    problems = load_scienceqa(SQA, "train")
    feats = {p.image_key: torch.ones(3, 5) for p in problems if p.has_image}
    ds = ScienceQADataset(problems, visual_features=feats)
    assert "visual_tokens" not in ds[2] and ds[0]["visual_tokens"].eq(1).all()
    assert ds.blank()["visual_tokens"].shape == (3, 5) and ds.blank()["visual_tokens"].eq(0).all()


# --------------------------------------------------------------------------------------------------- bad images


def test_missing_image_is_an_error_naming_file_and_record(coco_copy: Path):
    (coco_copy / "val2014" / "COCO_val2014_000000900004.jpg").unlink()
    samples = load_caption_training(coco_copy / "dataset_coco.json", coco_copy)
    with pytest.raises(ImageError) as e:
        CaptionTrainDataset(samples, image_transform=transform)
    msg = str(e.value)
    assert "COCO_val2014_000000900004.jpg" in msg and "image id 900004" in msg and "image file not found" in msg


def test_missing_images_are_skipped_counted_and_logged(coco_copy: Path, caplog):
    (coco_copy / "val2014" / "COCO_val2014_000000900004.jpg").unlink()
    samples = load_caption_training(coco_copy / "dataset_coco.json", coco_copy)
    with caplog.at_level(logging.WARNING):
        ds = CaptionTrainDataset(samples, image_transform=transform, on_bad_image="skip")
    assert len(ds) == len(samples) - 5  # the image's five captions
    assert len(ds.skipped) == 1 and ds.skipped[0].image.endswith("COCO_val2014_000000900004.jpg")
    assert "skipped 1 item(s)" in caplog.text and "900004" in caplog.text


def test_corrupt_image_error_names_file_and_record(sqa_copy: Path):
    bad = sqa_copy / "images" / "train" / "1" / "image.png"
    bad.write_bytes(b"not a png at all")
    ds = ScienceQADataset(load_scienceqa(sqa_copy, "train"), image_transform=transform)
    with pytest.raises(ImageError) as e:
        ds[0]
    assert str(e.value).startswith(f"{bad}: pid 1: cannot read image")
    with pytest.raises(ImageError, match="pid 7: image file not found"):
        load_rgb(sqa_copy / "nope.png", "pid 7")


def test_corrupt_image_skipped_in_workers_is_counted_in_batches(coco_copy: Path, tokenizer):
    """Images are decoded in DataLoader workers; a corrupt one becomes None there and the batches count it."""
    (coco_copy / "train2014" / "COCO_train2014_000000900003.jpg").write_bytes(b"\xff\xd8\xff garbage")
    samples = load_caption_training(coco_copy / "dataset_coco.json", coco_copy)
    ds = CaptionTrainDataset(samples, image_transform=transform, on_bad_image="skip")
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=Collator(tokenizer, 64))
    skipped = examples = 0
    for batch in loader:
        skipped += batch.stats["skipped"]
        examples += batch.stats["examples"]
        if not batch.meta:  # every item of this batch was skipped
            assert batch.inputs == {} and batch.num_items == 0
            continue
        assert batch.inputs["images"].shape[1:] == (3, 8, 8)
    assert skipped == 5 and examples == 10  # five captions of the corrupt image, counted, none silently lost


def test_missing_visual_feature_follows_the_policy():
    problems = load_scienceqa(SQA, "train")
    feats = {p.image_key: torch.ones(2, 2) for p in problems if p.has_image and p.pid != "2"}
    with pytest.raises(ImageError, match=r"train/2/image\.png: pid 2: no entry in visual_features"):
        ScienceQADataset(problems, visual_features=feats)
    ds = ScienceQADataset(problems, visual_features=feats, on_bad_image="skip")
    assert [p.pid for p in ds.records] == ["1", "3", "4"] and ds.skipped[0].record == "pid 2"
