"""COCO caption readers, splits and the Karpathy-test leakage guard, on the bundled samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.coco import (
    CaptionImage,
    caption_samples,
    coco_ground_truth,
    karpathy_test_ids,
    load_caption_images,
    load_caption_training,
    read_karpathy,
    read_lavis,
    read_official,
)
from data.errors import DataError, LeakageError

COCO = Path(__file__).resolve().parents[2] / "data" / "samples" / "coco"
VAL2014 = COCO / "annotations" / "captions_val2014.json"
TRAIN2014 = COCO / "annotations" / "captions_train2014.json"
KARPATHY = COCO / "dataset_coco.json"
LAVIS = {s: COCO / f"coco_karpathy_{s}.json" for s in ("train", "val", "test")}


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _by_id(images: list[CaptionImage]) -> dict[int, CaptionImage]:
    return {im.image_id: im for im in images}


def test_three_formats_give_the_same_items_for_the_same_images():
    official = _by_id(read_official(VAL2014, COCO) + read_official(TRAIN2014, COCO))
    karpathy = {s: _by_id(read_karpathy(KARPATHY, COCO, s)) for s in ("train", "val", "test")}
    lavis = {s: _by_id(read_lavis(LAVIS[s], COCO)) for s in ("train", "val", "test")}
    for split in ("train", "val", "test"):
        assert karpathy[split] == lavis[split], split
        assert karpathy[split], split
        for image_id, item in karpathy[split].items():
            assert official[image_id] == item
    test = karpathy["test"][900001]
    assert test.image_key == "val2014/COCO_val2014_000000900001.jpg"
    assert test.image_path == COCO / test.image_key and test.image_path.is_file()
    assert len(test.references) == 5


def test_karpathy_train_is_train_plus_restval():
    data = _read(KARPATHY)
    by_split = {s: {im["cocoid"] for im in data["images"] if im["split"] == s} for s in ("train", "restval")}
    assert by_split["train"] and by_split["restval"]
    train = {im.image_id for im in read_karpathy(KARPATHY, COCO, "train")}
    assert train == by_split["train"] | by_split["restval"]
    assert {im.image_id for im in read_karpathy(KARPATHY, COCO, "restval")} == by_split["restval"]


def test_training_is_one_sample_per_caption_and_eval_one_item_per_image():
    images = load_caption_images(KARPATHY, COCO, "train")
    samples = load_caption_training(KARPATHY, COCO)
    assert len(samples) == sum(len(im.references) for im in images) == 5 * len(images)
    assert [s.caption for s in samples] == [c for im in images for c in im.references]
    assert samples == caption_samples(images)
    assert load_caption_training(LAVIS["train"], COCO) == samples
    test = load_caption_images(LAVIS["test"], COCO, "test")
    assert len(test) == len({im.image_id for im in test}) == 2


def test_lavis_id_comes_from_the_file_name():
    assert karpathy_test_ids(LAVIS["test"]) == karpathy_test_ids(KARPATHY) == {900001, 900002}


def test_ground_truth_for_pycocotools(tmp_path: Path):
    from pycocotools.coco import COCO as CocoIndex

    images = read_karpathy(KARPATHY, COCO, "test")
    gt_path = tmp_path / "coco_karpathy_test_gt.json"
    _write(gt_path, coco_ground_truth(images))
    coco = CocoIndex(str(gt_path))
    assert sorted(coco.getImgIds()) == [900001, 900002]
    assert [a["caption"] for a in coco.imgToAnns[900001]] == images[0].references
    assert karpathy_test_ids(gt_path) == {900001, 900002}
    with pytest.raises(DataError, match="not from an official COCO captions file"):
        karpathy_test_ids(VAL2014)


def test_captions_are_stripped(coco_copy: Path):
    data = _read(coco_copy / "dataset_coco.json")
    data["images"][0]["sentences"][0]["raw"] = "  A caption with spaces. \n"
    _write(coco_copy / "dataset_coco.json", data)
    first = read_karpathy(coco_copy / "dataset_coco.json", coco_copy, data["images"][0]["split"])[0]
    assert first.references[0] == "A caption with spaces."


# ------------------------------------------------------------------------------------------------ leakage guard


def test_guard_refuses_an_unchecked_set_that_may_hold_test_images():
    with pytest.raises(LeakageError) as e:
        load_caption_training(VAL2014, COCO)
    msg = str(e.value)
    assert str(VAL2014) in msg and "4 training images" in msg and "Karpathy split" in msg


def test_guard_refuses_with_the_count_and_the_fix():
    with pytest.raises(LeakageError) as e:
        load_caption_training(VAL2014, COCO, karpathy_test=LAVIS["test"])
    msg = str(e.value)
    assert "2 of 4 training images are Karpathy test images" in msg
    assert "train on the Karpathy split" in msg and "data.filter_test_overlap=true" in msg
    assert "data.allow_test_overlap=true" in msg and "=True" not in msg  # the override users type, not Python


def test_guard_filters_and_reports_the_count(caplog):
    with caplog.at_level("WARNING"):
        samples = load_caption_training(VAL2014, COCO, karpathy_test=KARPATHY, filter_test_overlap=True)
    assert {s.image_id for s in samples} == {900004, 900005}
    assert "dropped 2 of 4" in caplog.text


def test_guard_allows_only_when_asked_and_warns():
    with pytest.warns(UserWarning, match="2 of 4 images that are Karpathy test images"):
        samples = load_caption_training(VAL2014, COCO, karpathy_test=KARPATHY, allow_test_overlap=True)
    assert len(samples) == 20
    with pytest.warns(UserWarning, match="may include Karpathy test images"):
        load_caption_training(VAL2014, COCO, allow_test_overlap=True)


def test_guard_on_train2017_style_file(coco_copy: Path, train2017: Path):
    """train2017 holds val2014 images under new names; ids, not names, find the overlap."""
    path = train2017
    with pytest.raises(LeakageError, match="Karpathy test file"):
        load_caption_training(path, coco_copy)
    with pytest.raises(LeakageError, match="2 of 4"):
        load_caption_training(path, coco_copy, karpathy_test=KARPATHY)
    kept = load_caption_training(path, coco_copy, karpathy_test=KARPATHY, filter_test_overlap=True)
    assert {s.image_key for s in kept} == {"train2017/000000900004.jpg", "train2017/000000900005.jpg"}
    assert all(s.image_path.is_file() for s in kept)


def test_sets_known_to_be_disjoint_pass_without_a_test_file():
    assert {s.image_id for s in load_caption_training(TRAIN2014, COCO)} == {900003, 900006}
    assert len(load_caption_training(LAVIS["train"], COCO)) == 15


def test_karpathy_train_is_checked_against_its_own_test_split(coco_copy: Path):
    data = _read(coco_copy / "dataset_coco.json")
    test_id = next(im["cocoid"] for im in data["images"] if im["split"] == "test")
    data["images"].append({**next(im for im in data["images"] if im["split"] == "train"), "cocoid": test_id})
    _write(coco_copy / "dataset_coco.json", data)
    with pytest.raises(LeakageError, match="1 of 4 training images"):
        load_caption_training(coco_copy / "dataset_coco.json", coco_copy)


# ------------------------------------------------------------------------------------------------------ bad input


def test_malformed_json_names_the_file_and_position(coco_copy: Path):
    path = coco_copy / "dataset_coco.json"
    path.write_text(path.read_text()[:500], encoding="utf-8")
    with pytest.raises(ValueError, match=r"dataset_coco\.json: not valid JSON \(line \d+ column \d+"):
        read_karpathy(path, coco_copy, "train")


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ValueError, match="captions_val2014.json: file not found"):
        read_official(tmp_path / "captions_val2014.json", tmp_path)


@pytest.mark.parametrize("field", ["caption", "image_id"])
def test_official_record_without_a_field(coco_copy: Path, field: str):
    path = coco_copy / "annotations" / "captions_val2014.json"
    data = _read(path)
    del data["annotations"][3][field]
    _write(path, data)
    with pytest.raises(DataError) as e:
        read_official(path, coco_copy)
    assert f"{path}: annotations[3] (id 4): missing field '{field}'" == str(e.value)


def test_karpathy_record_without_a_field(coco_copy: Path):
    path = coco_copy / "dataset_coco.json"
    data = _read(path)
    del data["images"][1]["filename"]
    _write(path, data)
    with pytest.raises(DataError, match=r"images\[1\] \(cocoid 900002\): missing field 'filename'"):
        read_karpathy(path, coco_copy, "test")


@pytest.mark.parametrize("fmt", ["official", "karpathy", "lavis"])
def test_empty_caption_names_file_and_record(coco_copy: Path, fmt: str):
    if fmt == "official":
        path = coco_copy / "annotations" / "captions_val2014.json"
        data = _read(path)
        data["annotations"][2]["caption"] = "   "
        expected = r"annotations\[2\] \(id 3\): empty caption"
    elif fmt == "karpathy":
        path = coco_copy / "dataset_coco.json"
        data = _read(path)
        data["images"][0]["sentences"][4]["raw"] = ""
        expected = r"images\[0\] \(cocoid 900001\) sentences\[4\]: empty caption"
    else:
        path = coco_copy / "coco_karpathy_train.json"
        data = _read(path)
        data[7]["caption"] = "\n"
        expected = r"\[7\] \(.*\.jpg\): empty caption"
    _write(path, data)
    with pytest.raises(DataError, match=expected) as e:
        load_caption_images(path, coco_copy, "test" if fmt == "karpathy" else None)
    assert str(path) in str(e.value)


def test_unknown_split_is_an_error():
    with pytest.raises(DataError, match="unknown split 'testing'.*train, val, test, restval"):
        read_karpathy(KARPATHY, COCO, "testing")
    with pytest.raises(DataError, match="file name says it holds 'test'"):
        load_caption_images(LAVIS["test"], COCO, "val")


def test_annotation_of_an_unknown_image(coco_copy: Path):
    path = coco_copy / "annotations" / "captions_val2014.json"
    data = _read(path)
    data["annotations"][0]["image_id"] = 12345
    _write(path, data)
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 1\): image_id 12345 is not in 'images'"):
        read_official(path, coco_copy)


def test_lavis_image_name_without_an_id(coco_copy: Path):
    path = coco_copy / "coco_karpathy_test.json"
    data = _read(path)
    data[1]["image"] = "val2014/picture.jpg"
    _write(path, data)
    with pytest.raises(DataError, match=r"\[1\] \(val2014/picture\.jpg\): cannot read the COCO image id"):
        read_lavis(path, coco_copy)


def test_not_a_caption_file(tmp_path: Path):
    path = tmp_path / "x.json"
    _write(path, {"foo": 1})
    with pytest.raises(DataError, match="not a COCO caption file"):
        load_caption_images(path, tmp_path)
