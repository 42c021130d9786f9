"""Image paths from annotation files stay under their image root: traversal and absolute paths are refused with the
file and record named; symlinked roots and symlinked folders under the root keep working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data.coco import read_karpathy, read_lavis, read_official
from data.errors import DataError, UnsafePathError
from data.scienceqa import load_scienceqa

ESCAPES = ["../../../../etc/passwd", "/etc/passwd"]


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _refused(call, file: Path, record: str) -> str:
    with pytest.raises(UnsafePathError) as e:
        call()
    msg = str(e.value)
    assert isinstance(e.value, DataError) and "\n" not in msg
    assert msg.startswith(f"{file}: {record}") and "outside the image root" in msg
    return msg


@pytest.mark.parametrize("escape", ESCAPES)
def test_official_file_name(coco_copy: Path, escape: str):
    path = coco_copy / "annotations" / "captions_val2014.json"
    data = _read(path)
    data["images"][1]["file_name"] = escape
    _write(path, data)
    _refused(lambda: read_official(path, coco_copy), path, "images[1] (id 900002)")


@pytest.mark.parametrize("field", ["filename", "filepath"])
@pytest.mark.parametrize("escape", ESCAPES)
def test_karpathy_filename_and_filepath(coco_copy: Path, escape: str, field: str):
    path = coco_copy / "dataset_coco.json"
    data = _read(path)
    data["images"][0][field] = escape
    _write(path, data)
    _refused(lambda: read_karpathy(path, coco_copy, "test"), path, "images[0] (cocoid 900001)")


@pytest.mark.parametrize("escape", [*ESCAPES, "val2014/../../outside/COCO_val2014_000000900001.jpg"])
def test_lavis_image(coco_copy: Path, escape: str):
    """The last case names a real file outside the root, with a readable id: it used to be read."""
    outside = coco_copy.parent / "outside"
    outside.mkdir()
    shutil.copy(coco_copy / "val2014" / "COCO_val2014_000000900001.jpg", outside)
    path = coco_copy / "coco_karpathy_test.json"
    data = _read(path)
    data[0]["image"] = escape
    _write(path, data)
    _refused(lambda: read_lavis(path, coco_copy), path, f"[0] ({escape})")


@pytest.mark.parametrize("escape", ESCAPES)
def test_scienceqa_image_name(sqa_copy: Path, escape: str):
    path = sqa_copy / "problems.json"
    data = _read(path)
    data["1"]["image"] = escape
    _write(path, data)
    _refused(lambda: load_scienceqa(sqa_copy, "train"), path, "pid 1")


def test_scienceqa_pid(sqa_copy: Path):
    """The pid is a folder of the image path: a pid of '../../..' leaves the root."""
    problems, splits = _read(sqa_copy / "problems.json"), _read(sqa_copy / "pid_splits.json")
    problems["../../.."] = problems.pop("1")
    splits["train"][0] = "../../.."
    _write(sqa_copy / "problems.json", problems)
    _write(sqa_copy / "pid_splits.json", splits)
    _refused(lambda: load_scienceqa(sqa_copy, "train"), sqa_copy / "problems.json", "pid ../../..")


def test_harmless_dot_segments_stay_allowed(coco_copy: Path):
    path = coco_copy / "coco_karpathy_test.json"
    data = _read(path)
    data[0]["image"] = "val2014/../val2014/COCO_val2014_000000900001.jpg"
    _write(path, data)
    assert read_lavis(path, coco_copy)[0].image_path.is_file()


def test_symlinked_root_and_symlinked_folder_under_the_root(coco_copy: Path, tmp_path: Path):
    link = tmp_path / "linked-root"
    link.symlink_to(coco_copy, target_is_directory=True)
    images = read_karpathy(link / "dataset_coco.json", link, "test")
    assert images and all(im.image_path.is_file() and im.image_path.parent.parent == link for im in images)

    shared = tmp_path / "shared-disk" / "val2014"  # val2014/ linked in from elsewhere, a common COCO layout
    shared.parent.mkdir()
    shutil.move(coco_copy / "val2014", shared)
    (coco_copy / "val2014").symlink_to(shared, target_is_directory=True)
    images = read_official(coco_copy / "annotations" / "captions_val2014.json", coco_copy)
    assert len(images) == 4 and all(im.image_path.is_file() for im in images)
    lavis = read_lavis(coco_copy / "coco_karpathy_test.json", coco_copy)
    assert len(lavis) == 2 and all(im.image_path.is_file() for im in lavis)
