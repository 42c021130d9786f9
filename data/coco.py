"""COCO captions: readers for the official, Karpathy and LAVIS formats, and the Karpathy-test leakage guard.

All three readers return the same records for the same image: the image key is the path relative to the image
root (``val2014/COCO_val2014_000000391895.jpg``), the id is the COCO image id, captions are stripped of
surrounding whitespace. Training uses one ``CaptionSample`` per caption; evaluation one ``CaptionImage`` per image.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data.errors import DataError, LeakageError, image_under_root
from mm_excitor.io import read_json

log = logging.getLogger(__name__)

KARPATHY_SPLITS = ("train", "restval", "val", "test")
# What the user can ask for: "train" is Karpathy train + restval (113,287 images), as everyone trains on.
CAPTION_SPLITS = ("train", "val", "test", "restval")
_OFFICIAL_NAME = re.compile(r"captions_(train|val|test)(20\d\d)\.json$")
_ID_IN_NAME = re.compile(r"(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


@dataclass(frozen=True)
class CaptionSample:
    """One training sample: one caption of one image."""

    image_path: Path
    image_key: str
    image_id: int
    caption: str


@dataclass(frozen=True)
class CaptionImage:
    """One evaluation item: an image with all its reference captions."""

    image_path: Path
    image_key: str
    image_id: int
    references: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------- readers


def detect_format(data: object, path: str | Path) -> str:
    """'official', 'karpathy' or 'lavis', from the structure of a loaded annotation file."""
    if isinstance(data, list):
        return "lavis"
    if isinstance(data, dict):
        if "annotations" in data and "images" in data:
            return "official"
        images = data.get("images")
        if isinstance(images, list) and (not images or (isinstance(images[0], dict) and "sentences" in images[0])):
            return "karpathy"
    raise DataError(
        path, None, "not a COCO caption file: expected the official format ({'images','annotations'}), "
        "Karpathy's dataset_coco.json ({'images': [{'sentences',...}]}) or a LAVIS list of {'image','caption'}"
    )


def read_official(
    path: str | Path, image_root: str | Path, image_dir: str | None = None
) -> list[CaptionImage]:
    """Read ``captions_{train,val}{2014,2017}.json``. Images live in ``image_root/image_dir``, where ``image_dir``
    defaults to the split in the file name (``val2014``); pass it for a renamed file."""
    path, image_root = Path(path), Path(image_root)
    return _parse_official(read_json(path), path, image_root, _image_dir(path, image_dir))


def _parse_official(data: object, path: Path, image_root: Path, image_dir: str) -> list[CaptionImage]:
    if detect_format(data, path) != "official":
        raise DataError(path, None, "not in the official COCO captions format")
    images: dict[int, CaptionImage] = {}
    for i, img in enumerate(_list(data, "images", path)):
        rec = f"images[{i}]"
        image_id = _int(_get(img, "id", path, rec), path, rec, "id")
        file_name = _str(_get(img, "file_name", path, rec), path, f"{rec} (id {image_id})", "file_name")
        if image_id in images:
            raise DataError(path, f"{rec} (id {image_id})", "duplicate image id")
        image_path = image_under_root(image_root, (image_dir, file_name), path, f"{rec} (id {image_id})")
        images[image_id] = CaptionImage(image_path, f"{image_dir}/{file_name}", image_id, [])
    for i, ann in enumerate(_list(data, "annotations", path)):
        rec = f"annotations[{i}]" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        image_id = _int(_get(ann, "image_id", path, rec), path, rec, "image_id")
        caption = _caption(_get(ann, "caption", path, rec), path, rec)
        if image_id not in images:
            raise DataError(path, rec, f"image_id {image_id} is not in 'images'")
        images[image_id].references.append(caption)
    return _require_references(images.values(), path)


def read_karpathy(path: str | Path, image_root: str | Path, split: str) -> list[CaptionImage]:
    """Read Karpathy's ``dataset_coco.json``. ``split`` is train (= train + restval), val, test or restval."""
    path, image_root = Path(path), Path(image_root)
    return _parse_karpathy(read_json(path), path, image_root, split)


def _parse_karpathy(data: object, path: Path, image_root: Path, split: str) -> list[CaptionImage]:
    wanted = _karpathy_splits(split, path)
    if detect_format(data, path) != "karpathy":
        raise DataError(path, None, "not in Karpathy's dataset_coco.json format")
    out: list[CaptionImage] = []
    seen: set[int] = set()
    for i, img in enumerate(_list(data, "images", path)):
        rec = f"images[{i}]"
        img_split = _str(_get(img, "split", path, rec), path, rec, "split")
        if img_split not in KARPATHY_SPLITS:
            raise DataError(path, rec, f"unknown split {img_split!r} (expected one of {', '.join(KARPATHY_SPLITS)})")
        if img_split not in wanted:
            continue
        image_id = _int(_get(img, "cocoid", path, rec), path, rec, "cocoid")
        rec = f"{rec} (cocoid {image_id})"
        parts = (_str(_get(img, "filepath", path, rec), path, rec, "filepath"),
                 _str(_get(img, "filename", path, rec), path, rec, "filename"))
        image_path, key = image_under_root(image_root, parts, path, rec), "/".join(parts)
        sentences = _get(img, "sentences", path, rec)
        if not isinstance(sentences, list):
            raise DataError(path, rec, "'sentences' is not a list")
        refs = [_caption(_get(s, "raw", path, f"{rec} sentences[{j}]"), path, f"{rec} sentences[{j}]")
                for j, s in enumerate(sentences)]
        if not refs:
            raise DataError(path, rec, "image has no captions")
        if image_id in seen:
            raise DataError(path, rec, "duplicate cocoid")
        seen.add(image_id)
        out.append(CaptionImage(image_path, key, image_id, refs))
    return out


def read_lavis(path: str | Path, image_root: str | Path) -> list[CaptionImage]:
    """Read LAVIS/BLIP ``coco_karpathy_{train,val,test}.json``: a list of ``{"image", "caption"}`` where the
    caption is a string (train: one entry per caption) or a list (val/test: one entry per image). The COCO id is
    taken from the file name, as LAVIS does (``..._000000391895.jpg`` -> 391895)."""
    path, image_root = Path(path), Path(image_root)
    return _parse_lavis(read_json(path), path, image_root)


def _parse_lavis(data: object, path: Path, image_root: Path) -> list[CaptionImage]:
    if detect_format(data, path) != "lavis":
        raise DataError(path, None, "not in the LAVIS format (a JSON list)")
    images: dict[str, CaptionImage] = {}
    for i, ann in enumerate(data):
        rec = f"[{i}]"
        key = _str(_get(ann, "image", path, rec), path, rec, "image")
        rec = f"[{i}] ({key})"
        image_path = image_under_root(image_root, (key,), path, rec)
        m = _ID_IN_NAME.search(key)
        if m is None:
            raise DataError(path, rec, "cannot read the COCO image id from the file name (expected ..._<id>.jpg)")
        raw = _get(ann, "caption", path, rec)
        captions = raw if isinstance(raw, list) else [raw]
        refs = [_caption(c, path, rec) for c in captions]
        if not refs:
            raise DataError(path, rec, "empty caption list")
        if key not in images:
            images[key] = CaptionImage(image_path, key, int(m.group(1)), [])
        images[key].references.extend(refs)
    return _require_references(images.values(), path)


def load_caption_images(
    path: str | Path, image_root: str | Path, split: str | None = None, image_dir: str | None = None
) -> list[CaptionImage]:
    """Read any of the three formats (detected from the content), one item per image. ``split`` is required for
    Karpathy's ``dataset_coco.json``; for the other formats the file is the split, and a ``split`` given must
    agree with the file name (a guard against passing the wrong file)."""
    path = Path(path)
    return _load(read_json(path), path, Path(image_root), split, image_dir)[0]


def _load(
    data: object, path: Path, image_root: Path, split: str | None, image_dir: str | None
) -> tuple[list[CaptionImage], str]:
    fmt = detect_format(data, path)
    if fmt == "karpathy":
        if split is None:
            raise DataError(path, None, f"Karpathy's dataset_coco.json needs a split ({', '.join(CAPTION_SPLITS)})")
        return _parse_karpathy(data, path, image_root, split), fmt
    if split is not None:
        _check_split_matches_name(path, split)
    if fmt == "official":
        return _parse_official(data, path, image_root, _image_dir(path, image_dir)), fmt
    return _parse_lavis(data, path, image_root), fmt


def caption_samples(images: Iterable[CaptionImage]) -> list[CaptionSample]:
    """One training sample per caption (every caption of every image)."""
    return [CaptionSample(im.image_path, im.image_key, im.image_id, c) for im in images for c in im.references]


def coco_ground_truth(images: Iterable[CaptionImage]) -> dict:
    """The references as a COCO-format ground-truth dict that ``pycocotools.coco.COCO`` indexes (as LAVIS's
    ``coco_karpathy_test_gt.json``), whatever format they were read from."""
    images = list(images)
    annotations = [{"image_id": im.image_id, "id": 0, "caption": c} for im in images for c in im.references]
    for i, ann in enumerate(annotations, start=1):
        ann["id"] = i
    return {"info": {"description": "references written by data.coco.coco_ground_truth"}, "licenses": [],
            "type": "captions", "images": [{"id": im.image_id, "file_name": im.image_key} for im in images],
            "annotations": annotations}


# --------------------------------------------------------------------------------------------------- leakage guard

# Splits that name training data: evaluating on one of them is asked for by name, never a default.
TRAINING_SPLITS = ("train", "restval")
_FIX = ("Fix: train on the Karpathy split (dataset_coco.json with data.train_split=train, i.e. train + restval, or "
        "LAVIS coco_karpathy_train.json), or drop those images with data.filter_test_overlap=true; "
        "data.allow_test_overlap=true trains on them anyway (their scores are then not comparable).")


def karpathy_test_ids(path: str | Path) -> set[int]:
    """COCO ids of the Karpathy test split, from ``dataset_coco.json`` (split == test), LAVIS
    ``coco_karpathy_test.json`` (every entry) or LAVIS's ground truth ``coco_karpathy_test_gt.json``."""
    path = Path(path)
    data = read_json(path)
    fmt = detect_format(data, path)
    if fmt == "karpathy":
        return {im.image_id for im in _parse_karpathy(data, path, Path("."), "test")}
    if fmt == "lavis":
        return {im.image_id for im in _parse_lavis(data, path, Path("."))}
    if "karpathy_test" in path.name:  # the COCO-format ground truth of the Karpathy test split
        return {_int(_get(im, "id", path, f"images[{i}]"), path, f"images[{i}]", "id")
                for i, im in enumerate(_list(data, "images", path))}
    raise DataError(path, None, "the Karpathy test ids come from dataset_coco.json, coco_karpathy_test.json or "
                    "coco_karpathy_test_gt.json, not from an official COCO captions file")


def guard_test_overlap(
    images: Sequence[CaptionImage],
    test_ids: set[int] | None,
    source: str | Path,
    *,
    held_out: Mapping[str, set[int]] | None = None,
    known_disjoint: bool = False,
    allow_test_overlap: bool = False,
    filter_test_overlap: bool = False,
) -> tuple[list[CaptionImage], int]:
    """Refuse, filter or (explicitly) allow training images that are held-out images.

    Held out are the Karpathy test images (``test_ids``) and every set in ``held_out`` (a description such as
    ``"validation images of dataset_coco.json split 'val'"`` -> its ids). Returns (kept images, number of
    overlapping images found). ``test_ids`` None means unknown: then the set is refused unless ``known_disjoint``
    (a Karpathy train split, or train2014, which has no val2014 image) or ``allow_test_overlap``. Everything that is
    not refused is logged, so it is never silent. Messages give the command-line overrides (``data.*``).
    """
    if allow_test_overlap and filter_test_overlap:
        raise ValueError("allow_test_overlap and filter_test_overlap are exclusive")
    kept = list(images)
    if test_ids is None and not known_disjoint:
        if not allow_test_overlap:
            raise LeakageError(
                source, None,
                f"{len(kept)} training images, of which an unknown number are Karpathy test images: this COCO split "
                "contains val2014 images and the Karpathy test split (5,000 images) is drawn from val2014. It cannot "
                "be checked without a Karpathy test file: pass data.karpathy_test=<dataset_coco.json or "
                "coco_karpathy_test.json> (or name that file as data.eval_annotations). " + _FIX)
        _warn(f"{source}: training on {len(kept)} images that may include Karpathy test images (not checked: no "
              "Karpathy test file given), because data.allow_test_overlap=true")
    sets = {"Karpathy test images": test_ids or set(), **(held_out or {})}
    found: dict[str, list[int]] = {}
    for im in kept:
        what = next((name for name, ids in sets.items() if im.image_id in ids), None)
        if what is not None:
            found.setdefault(what, []).append(im.image_id)
    n = sum(len(ids) for ids in found.values())
    if n == 0:
        return kept, 0
    what = " or ".join(f"{name} (e.g. ids {', '.join(map(str, ids[:5]))})" for name, ids in found.items())
    if filter_test_overlap:
        dropped = {i for ids in found.values() for i in ids}
        log.warning("%s: dropped %d of %d training images that are %s", source, n, len(kept), what)
        return [im for im in kept if im.image_id not in dropped], n
    if allow_test_overlap:
        _warn(f"{source}: training on {n} of {len(kept)} images that are {what}, because "
              "data.allow_test_overlap=true; scores on those sets are not comparable")
        return kept, n
    raise LeakageError(source, None, f"{n} of {len(kept)} training images are {what}. " + _FIX)


def load_caption_training(
    path: str | Path,
    image_root: str | Path,
    split: str | None = None,
    *,
    image_dir: str | None = None,
    karpathy_test: str | Path | None = None,
    allow_test_overlap: bool = False,
    filter_test_overlap: bool = False,
) -> list[CaptionSample]:
    """Training samples (one per caption) from any of the three formats, behind the leakage guard.

    The guard compares image ids with the Karpathy test ids: those of ``karpathy_test`` when given, else those of
    the file itself when it is ``dataset_coco.json``. Without ids, only sets that cannot contain test images
    (Karpathy/LAVIS train, official train2014) are accepted; others (train2017, val2014...) are refused.
    A run that also validates and evaluates loads through ``load_caption_splits``, which checks those sets too.
    """
    path = Path(path)
    training = _Training.read(read_json(path), path, Path(image_root), split, image_dir)
    test_ids = karpathy_test_ids(karpathy_test) if karpathy_test is not None else training.own_test_ids()
    return training.samples(test_ids, {}, allow_test_overlap, filter_test_overlap)


@dataclass(frozen=True)
class CaptionSplits:
    """What a caption run trains on (one sample per caption) and validates / evaluates on (one item per image)."""

    train: list[CaptionSample] | None
    val: list[CaptionImage] | None
    eval: list[CaptionImage] | None


def load_caption_splits(
    image_root: str | Path,
    train_annotations: str | Path,
    *,
    train_split: str | None = "train",
    val_annotations: str | Path | None = None,
    val_split: str | None = "val",
    eval_annotations: str | Path | None = None,
    eval_split: str | None = "test",
    karpathy_test: str | Path | None = None,
    allow_test_overlap: bool = False,
    filter_test_overlap: bool = False,
    with_training: bool = True,
) -> CaptionSplits:
    """The training samples and the validation / evaluation images of a run, checked against each other.

    `with_training=False` (evaluation only) reads no training data: `train` is None and there is nothing to guard,
    but a held-out split is still refused from a file that holds only training data.

    Files: validation reads ``val_annotations``, else ``eval_annotations``, else the training file; evaluation
    reads ``eval_annotations``, else the training file (Karpathy's dataset_coco.json holds every split). A split
    of None is not loaded.

    Evaluation and validation never come from training data unless asked for by name (a split ``train`` or
    ``restval``):
    - a LAVIS or official file holds one split: asking it for another (``test`` from LAVIS training data, from
      ``*karpathy_train*.json`` or ``captions_train2017.json``), reading a held-out split from the training file
      itself, or validation and evaluation under two names from one such file is an error naming the setting to
      pass (``data.val_annotations``, ``data.eval_annotations``);
    - the training set is guarded against the validation and evaluation images and the Karpathy test images (ids
      from ``karpathy_test``, else the training file if it is dataset_coco.json, else the evaluation file if it is
      dataset_coco.json or a LAVIS file read as ``test``): overlap is refused, dropped
      (``data.filter_test_overlap=true``) or kept with a warning (``data.allow_test_overlap=true``). This also
      catches Karpathy val images inside train2017 when validating on Karpathy val.
    """
    root, train_path = Path(image_root), Path(train_annotations)
    files = _JsonFiles()
    eval_path = Path(eval_annotations) if eval_annotations else train_path
    val_path = Path(val_annotations) if val_annotations else eval_path
    roles = [("evaluation", "data.eval_annotations", "data.eval_split", eval_path, eval_split),
             ("validation", "data.val_annotations", "data.val_split", val_path, val_split)]
    loaded: dict[str, list[CaptionImage] | None] = {}
    held_out: dict[str, set[int]] = {}
    for role, setting, split_setting, path, split in roles:
        if split is None:
            loaded[role] = None
            continue
        data = files.read(path)
        _check_held_out_source(data, path, split, train_path, setting, split_setting)
        images = loaded[role] = _load(data, path, root, split, None)[0]
        if split in TRAINING_SPLITS:
            _warn(f"{path}: {role} on the training split {split!r}, because {split_setting}={split} asks for it")
        else:
            held_out[f"{role} images of {path} split {split!r}"] = {im.image_id for im in images}
    both = val_split is not None and eval_split is not None and val_split != eval_split
    if both and _same_file(val_path, eval_path):
        fmt = detect_format(files.read(val_path), val_path)
        if fmt != "karpathy":
            raise DataError(val_path, None, f"a {fmt} file holds one split, so validation ({val_split!r}) and "
                            f"evaluation ({eval_split!r}) cannot both come from it: pass the validation file as "
                            "data.val_annotations (e.g. coco_karpathy_val.json), or set data.val_split=null")
    if not with_training:
        return CaptionSplits(None, loaded["validation"], loaded["evaluation"])
    training = _Training.read(files.read(train_path), train_path, root, train_split, None)
    if karpathy_test is not None:
        test_ids = karpathy_test_ids(karpathy_test)
    elif (own := training.own_test_ids()) is not None:
        test_ids = own
    else:
        test_ids = _eval_file_test_ids(files, eval_annotations, eval_split, loaded["evaluation"])
    samples = training.samples(test_ids, held_out, allow_test_overlap, filter_test_overlap)
    return CaptionSplits(samples, loaded["validation"], loaded["evaluation"])


@dataclass(frozen=True)
class _Training:
    """A training file read once: its images and what the guard needs to know about it."""

    path: Path
    images: list[CaptionImage]
    data: object
    fmt: str
    known_disjoint: bool

    @classmethod
    def read(cls, data: object, path: Path, image_root: Path, split: str | None, image_dir: str | None) -> _Training:
        fmt = detect_format(data, path)
        if fmt == "karpathy" and split is None:
            split = "train"
        images, _ = _load(data, path, image_root, split, image_dir)
        known_disjoint = (fmt == "lavis" and "karpathy_train" in path.name) or (
            fmt == "official" and _image_dir(path, image_dir) == "train2014")
        return cls(path, images, data, fmt, known_disjoint)

    def own_test_ids(self) -> set[int] | None:
        """The Karpathy test ids when the training file is dataset_coco.json (it holds the test split too)."""
        if self.fmt != "karpathy":
            return None
        return {im.image_id for im in _parse_karpathy(self.data, self.path, Path("."), "test")}

    def samples(self, test_ids: set[int] | None, held_out: Mapping[str, set[int]], allow: bool,
                filter_: bool) -> list[CaptionSample]:
        kept, _ = guard_test_overlap(self.images, test_ids, self.path, held_out=held_out,
                                     known_disjoint=self.known_disjoint, allow_test_overlap=allow,
                                     filter_test_overlap=filter_)
        samples = caption_samples(kept)
        log.info("%s: %d training images, %d captions", self.path, len(kept), len(samples))
        return samples


class _JsonFiles:
    """Each annotation file parsed once (dataset_coco.json is ~150 MB and may serve train, val and test)."""

    def __init__(self) -> None:
        self._data: dict[Path, object] = {}

    def read(self, path: Path) -> object:
        key = path.resolve()
        if key not in self._data:
            self._data[key] = read_json(path)
        return self._data[key]


def _check_held_out_source(
    data: object, path: Path, split: str, train_path: Path, setting: str, split_setting: str
) -> None:
    """Refuse to read a held-out split from a single-split file that holds another split, or from the training file."""
    fmt = detect_format(data, path)
    if fmt == "karpathy" or split in TRAINING_SPLITS:
        return
    held = _single_split_held(data, fmt, path)
    where = (f"pass the file holding {split!r} as {setting} (e.g. coco_karpathy_{split}.json, or dataset_coco.json), "
             f"or set {split_setting}=null")
    if held is not None and held != split:
        raise LeakageError(path, None, f"holds the {held!r} split, not {split!r}: {where}")
    if _same_file(path, train_path):
        raise LeakageError(path, None, f"is the training file; the held-out split {split!r} cannot come from it: "
                           + where)


def _single_split_held(data: object, fmt: str, path: Path) -> str | None:
    """The split a LAVIS or official file holds, from its name, or (LAVIS) 'train' when every entry is one caption
    (LAVIS training data; its val/test files have one entry per image with a caption list); None if unknown."""
    m = re.search(r"karpathy_(train|val|test)\b", path.name) or _OFFICIAL_NAME.search(path.name)
    if m is not None:
        return m.group(1)
    if fmt == "lavis" and data and all(isinstance(ann, dict) and isinstance(ann.get("caption"), str) for ann in data):
        return "train"
    return None


def _eval_file_test_ids(
    files: _JsonFiles, eval_annotations: str | Path | None, eval_split: str | None,
    eval_images: list[CaptionImage] | None,
) -> set[int] | None:
    """Karpathy test ids from the evaluation file the config names: dataset_coco.json, or a LAVIS test file."""
    if not eval_annotations:
        return None
    path = Path(eval_annotations)
    data = files.read(path)
    fmt = detect_format(data, path)
    if fmt == "karpathy":
        return {im.image_id for im in _parse_karpathy(data, path, Path("."), "test")}
    if fmt == "lavis" and eval_split == "test" and eval_images is not None:
        return {im.image_id for im in eval_images}
    return None


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _warn(msg: str) -> None:
    log.warning(msg)
    warnings.warn(msg, stacklevel=4)


# ------------------------------------------------------------------------------------------------------- internals


def _karpathy_splits(split: str, path: Path) -> set[str]:
    if split not in CAPTION_SPLITS:
        raise DataError(path, None, f"unknown split {split!r}; Karpathy splits are {', '.join(CAPTION_SPLITS)} "
                        "(train includes restval)")
    return {"train", "restval"} if split == "train" else {split}


def _check_split_matches_name(path: Path, split: str) -> None:
    if split not in CAPTION_SPLITS:
        raise DataError(path, None, f"unknown split {split!r}; expected one of {', '.join(CAPTION_SPLITS)}")
    m = re.search(r"karpathy_(train|val|test)\b", path.name) or _OFFICIAL_NAME.search(path.name)
    if m is not None and m.group(1) != split:
        raise DataError(path, None, f"split {split!r} asked for, but the file name says it holds {m.group(1)!r}")


def _image_dir(path: Path, image_dir: str | None) -> str:
    """The image folder of an official file: given, or from its name (captions_val2014.json -> val2014)."""
    if image_dir is not None:
        return image_dir
    m = _OFFICIAL_NAME.search(path.name)
    if m is None:
        raise DataError(path, None, "cannot tell the image folder from the file name "
                        "(expected captions_<split><year>.json); pass image_dir='val2014' or similar")
    return m.group(1) + m.group(2)


def _require_references(images: Iterable[CaptionImage], path: Path) -> list[CaptionImage]:
    out = list(images)
    for im in out:
        if not im.references:
            raise DataError(path, f"image id {im.image_id} ({im.image_key})", "image has no captions")
    return out


def _list(data: object, key: str, path: Path) -> list:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise DataError(path, None, f"missing or non-list '{key}'")
    return value


def _get(record: object, key: str, path: Path, rec: str) -> object:
    if not isinstance(record, dict):
        raise DataError(path, rec, f"record is a {type(record).__name__}, not an object")
    if key not in record:
        raise DataError(path, rec, f"missing field '{key}'")
    return record[key]


def _str(value: object, path: Path, rec: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(path, rec, f"'{name}' must be a non-empty string, got {value!r}")
    return value


def _int(value: object, path: Path, rec: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, rec, f"'{name}' must be an integer, got {value!r}")
    return value


def _caption(value: object, path: Path, rec: str) -> str:
    if not isinstance(value, str):
        raise DataError(path, rec, f"caption must be a string, got {value!r}")
    caption = value.strip()
    if not caption:
        raise DataError(path, rec, "empty caption")
    return caption
