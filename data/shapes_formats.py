"""Writers for the official file formats: COCO captions (Karpathy ``dataset_coco.json`` and per-split official
files that ``pycocotools.coco.COCO`` loads) and ScienceQA (``problems.json`` + ``pid_splits.json``).

JSON files are written atomically (temp file + ``os.replace``) so that an interrupted run never leaves a torn
file behind for a reader to trip over.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mm_excitor.io import atomic_write_json

SPLITS = ("train", "val", "test")
# The official files are named like COCO 2014 (captions_val2014.json, images in val2014/), the convention that
# readers written for COCO use to find the image folder of a file (data.coco does).
COCO_YEAR = "2014"


@dataclass(frozen=True)
class CaptionedImage:
    image_id: int
    split: str
    file_name: str
    captions: tuple[str, ...]


def coco_image_dir(split: str) -> str:
    return f"{split}{COCO_YEAR}"


def karpathy_tokens(caption: str) -> list[str]:
    """Lower-case words without punctuation, as in Karpathy's files."""
    return re.findall(r"[a-z0-9]+", caption.lower())


def write_coco(root: Path, images: Sequence[CaptionedImage], image_size: int) -> tuple[Path, dict[str, Path]]:
    """Write ``dataset_coco.json`` and ``annotations/captions_{split}2014.json``; return their paths.

    Ids: ``cocoid`` = official image ``id``; ``imgid``/``sentid`` count from 0 over the whole file as in
    Karpathy's; official annotation ``id`` = ``sentid + 1``.
    """
    karpathy = []
    official = {split: {"info": {"description": "mm-excitor synthetic shapes (data/shapes.py)"}, "licenses": [],
                        "type": "captions", "images": [], "annotations": []} for split in SPLITS}
    sentid = 0
    for imgid, image in enumerate(images):
        sentids = list(range(sentid, sentid + len(image.captions)))
        karpathy.append({
            "filepath": coco_image_dir(image.split), "filename": image.file_name, "imgid": imgid,
            "split": image.split, "sentids": sentids, "cocoid": image.image_id,
            "sentences": [{"tokens": karpathy_tokens(raw), "raw": raw, "imgid": imgid, "sentid": i}
                          for i, raw in zip(sentids, image.captions)],
        })
        split_file = official[image.split]
        split_file["images"].append({"id": image.image_id, "file_name": image.file_name,
                                     "height": image_size, "width": image_size})
        split_file["annotations"] += [{"id": i + 1, "image_id": image.image_id, "caption": raw}
                                      for i, raw in zip(sentids, image.captions)]
        sentid += len(image.captions)
    karpathy_path = root / "dataset_coco.json"
    atomic_write_json(karpathy_path, {"images": karpathy, "dataset": "coco"}, indent=None)
    official_paths = {}
    for split, content in official.items():
        official_paths[split] = root / "annotations" / f"captions_{coco_image_dir(split)}.json"
        atomic_write_json(official_paths[split], content, indent=None)
    return karpathy_path, official_paths


def pid_splits(splits: dict[str, list[str]], mini_fraction: float = 0.1) -> dict[str, list[str]]:
    """The seven lists of the official file: train/val/test, trainval, and mini* (the first 10% of each)."""
    out = dict(splits)
    out["trainval"] = splits["train"] + splits["val"]
    for split in SPLITS:
        pids = splits[split]
        out[f"mini{split}"] = pids[:max(1, round(len(pids) * mini_fraction))] if pids else []
    return out


def write_scienceqa(root: Path, problems: dict[str, dict], splits: dict[str, list[str]]) -> tuple[Path, Path]:
    """Write ``problems.json`` and ``pid_splits.json``; return their paths."""
    problems_path, splits_path = root / "problems.json", root / "pid_splits.json"
    atomic_write_json(problems_path, problems, indent=None)
    atomic_write_json(splits_path, pid_splits(splits), indent=None)
    return problems_path, splits_path
