"""A caption run's train / validation / evaluation sets: evaluation never silently comes from training data, LAVIS
validation and test files are set separately, and the leakage guard uses every held-out file the run names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from data.coco import load_caption_splits, read_karpathy
from data.errors import DataError, LeakageError

COCO = Path(__file__).resolve().parents[2] / "data" / "samples" / "coco"
KARPATHY = COCO / "dataset_coco.json"
LAVIS = {s: COCO / f"coco_karpathy_{s}.json" for s in ("train", "val", "test")}
VAL2014 = COCO / "annotations" / "captions_val2014.json"
TRAIN2014 = COCO / "annotations" / "captions_train2014.json"


def _ids(images) -> set[int]:
    return {im.image_id for im in images}


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def lavis_renamed(tmp_path: Path) -> Path:
    """LAVIS training data under a name that does not say which split it holds."""
    path = tmp_path / "coco_train.json"
    shutil.copy(LAVIS["train"], path)
    return path


# ------------------------------------------------------------------------------- where val/eval come from


def test_karpathy_file_serves_every_split():
    splits = load_caption_splits(COCO, KARPATHY)
    assert _ids(splits.val) == _ids(read_karpathy(KARPATHY, COCO, "val")) == {900005}
    assert _ids(splits.eval) == {900001, 900002}
    assert {s.image_id for s in splits.train} == {900003, 900004, 900006}


def test_lavis_validation_and_test_files_set_separately():
    splits = load_caption_splits(COCO, LAVIS["train"], val_annotations=LAVIS["val"], eval_annotations=LAVIS["test"])
    assert _ids(splits.val) == {900005} and _ids(splits.eval) == {900001, 900002}
    assert len(splits.train) == 15


def test_lavis_training_file_is_never_the_eval_set(lavis_renamed: Path):
    """The issue's case: LAVIS training data as the only file, a Karpathy test file for the guard."""
    with pytest.raises(LeakageError) as e:
        load_caption_splits(COCO, lavis_renamed, karpathy_test=LAVIS["test"])
    msg = _one_line(e)
    assert msg.startswith(f"{lavis_renamed}: holds the 'train' split, not 'test'")
    assert "data.eval_annotations" in msg and "coco_karpathy_test.json" in msg
    with pytest.raises(LeakageError, match=r"holds the 'train' split, not 'val'.*data\.val_annotations"):
        load_caption_splits(COCO, lavis_renamed, val_annotations=lavis_renamed, eval_annotations=LAVIS["test"])


def test_training_file_is_refused_as_eval_even_when_its_content_does_not_say_so(tmp_path: Path):
    path = tmp_path / "mine.json"  # one entry per image with a caption list: the content cannot tell
    shutil.copy(LAVIS["val"], path)
    with pytest.raises(LeakageError, match=r"mine\.json: is the training file; .*'test'.*data\.eval_annotations"):
        load_caption_splits(COCO, path, val_split=None)


def test_official_training_file_is_never_the_eval_set():
    with pytest.raises(LeakageError, match=r"captions_train2014\.json: holds the 'train' split, not 'test'"):
        load_caption_splits(COCO, TRAIN2014, val_split=None)


def test_validation_from_the_lavis_test_file_is_refused():
    with pytest.raises(LeakageError) as e:
        load_caption_splits(COCO, LAVIS["train"], eval_annotations=LAVIS["test"])
    msg = _one_line(e)
    assert "holds the 'test' split, not 'val'" in msg and "data.val_annotations" in msg and "data.val_split=null" in msg
    splits = load_caption_splits(COCO, LAVIS["train"], eval_annotations=LAVIS["test"], val_split=None)
    assert splits.val is None and _ids(splits.eval) == {900001, 900002}


def test_one_unnamed_single_split_file_cannot_be_validation_and_test(tmp_path: Path):
    test_file = tmp_path / "eval.json"
    shutil.copy(LAVIS["test"], test_file)
    with pytest.raises(DataError, match=r"eval\.json: .*validation \('val'\) and evaluation \('test'\) cannot both"):
        load_caption_splits(COCO, LAVIS["train"], eval_annotations=test_file)


def test_training_data_as_eval_only_when_asked_for_by_name(lavis_renamed: Path):
    with pytest.warns(UserWarning, match="evaluation on the training split 'train'"):
        splits = load_caption_splits(COCO, lavis_renamed, val_split=None, eval_split="train",
                                     karpathy_test=LAVIS["test"])
    assert _ids(splits.eval) == {s.image_id for s in splits.train}
    with pytest.warns(UserWarning, match="data.eval_split=train"):
        load_caption_splits(COCO, KARPATHY, val_split=None, eval_split="train")


# ------------------------------------------------------------------------------------- the leakage guard


@pytest.mark.parametrize("eval_file", [LAVIS["test"], KARPATHY])
def test_guard_uses_the_karpathy_test_file_named_as_eval_annotations(eval_file: Path):
    """val2014 holds Karpathy test images; the eval file says which, without data.karpathy_test."""
    with pytest.raises(LeakageError) as e:
        load_caption_splits(COCO, VAL2014, train_split="val", val_split=None, eval_annotations=eval_file)
    msg = _one_line(e)
    assert "2 of 4 training images are Karpathy test images (e.g. ids 900001, 900002)" in msg
    assert "data.filter_test_overlap=true" in msg and "data.allow_test_overlap=true" in msg
    kept = load_caption_splits(COCO, VAL2014, train_split="val", val_split=None, eval_annotations=eval_file,
                               filter_test_overlap=True)
    assert {s.image_id for s in kept.train} == {900004, 900005}


def test_karpathy_val_images_inside_train2017_are_caught(train2017: Path, coco_copy: Path):
    karpathy = coco_copy / "dataset_coco.json"
    with pytest.raises(LeakageError) as e:
        load_caption_splits(coco_copy, train2017, eval_annotations=karpathy)
    msg = _one_line(e)
    assert "3 of 4 training images are Karpathy test images (e.g. ids 900001, 900002)" in msg
    assert f"validation images of {karpathy} split 'val' (e.g. ids 900005)" in msg
    kept = load_caption_splits(coco_copy, train2017, eval_annotations=karpathy, filter_test_overlap=True)
    assert {s.image_key for s in kept.train} == {"train2017/000000900004.jpg"}
    assert _ids(kept.val) == {900005} and _ids(kept.eval) == {900001, 900002}
    with pytest.warns(UserWarning, match="training on 3 of 4 images"):
        allowed = load_caption_splits(coco_copy, train2017, eval_annotations=karpathy, allow_test_overlap=True)
    assert len({s.image_id for s in allowed.train}) == 4


def test_validation_overlap_is_caught_with_a_lavis_val_file(train2017: Path, coco_copy: Path):
    with pytest.raises(LeakageError, match=r"validation images of .*coco_karpathy_val\.json split 'val'"):
        load_caption_splits(coco_copy, train2017, val_annotations=coco_copy / "coco_karpathy_val.json",
                            eval_annotations=coco_copy / "coco_karpathy_test.json")


def test_unknown_test_ids_name_the_overrides(train2017: Path, coco_copy: Path):
    with pytest.raises(LeakageError) as e:
        load_caption_splits(coco_copy, train2017, val_split=None, eval_split=None)
    msg = _one_line(e)
    assert "data.karpathy_test=" in msg and "data.eval_annotations" in msg and "data.filter_test_overlap=true" in msg


# ------------------------------------------------------------------------------------------ the caption task


def test_the_caption_task_uses_the_checked_splits(lavis_renamed: Path):
    """tasks.caption (what train_caption.py and `python -m tasks.generate caption` build) goes through the same
    checks; evaluation alone reads no training data."""
    from tasks.base import VisualSource
    from tasks.caption import CaptionDataConfig, CaptionRunConfig, CaptionTask

    def build(splits=("train", "val", "eval"), **data):
        return CaptionTask().build_data(CaptionRunConfig(data=CaptionDataConfig(image_root=str(COCO), **data)),
                                        VisualSource(image_transform=lambda image: torch.zeros(3, 2, 2)), splits)

    with pytest.raises(LeakageError, match="holds the 'train' split, not 'test'"):
        build(train_annotations=str(lavis_renamed), karpathy_test=str(LAVIS["test"]))
    files = {"train_annotations": str(LAVIS["train"]), "val_annotations": str(LAVIS["val"]),
             "eval_annotations": str(LAVIS["test"])}
    data = build(**files)
    assert set(data.references) == {900001, 900002}
    assert {s.image_id for s in data.val.records} == {900005}
    assert data.identity["train_items"] == len(data.train)
    evaluation_only = build(("eval",), **{**files, "train_annotations": "/no/such/training/file.json"})
    assert evaluation_only.train is None and evaluation_only.val is None and set(evaluation_only.references) == {
        900001, 900002}
    # `generate --split val` reads the validation file, not the test file
    config = CaptionTask().for_split(CaptionRunConfig(data=CaptionDataConfig(image_root=str(COCO), **files)), "val")
    validation = CaptionTask().build_data(config, VisualSource(image_transform=lambda image: torch.zeros(3, 2, 2)),
                                          ("eval",))
    assert set(validation.references) == {900005}
