"""COCO caption files: the ground-truth annotation file in, the official results file out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mm_excitor.cli import format_ids
from mm_excitor.io import atomic_write_json, read_json


def load_references(path: Path) -> dict[int, list[str]]:
    """Read a COCO-format caption GT file (`images[].id`, `annotations[].image_id/caption`) into id -> captions.

    Keeps the file's image and annotation order: pycocoevalcap iterates in that order, and the corpus sums of
    BLEU/CIDEr only match it bit for bit when we do the same.
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise ValueError(f"{path}: not a COCO caption annotation file (needs 'images' and 'annotations' lists)")
    refs: dict[int, list[str]] = {}
    for k, img in enumerate(data["images"]):
        image_id = img.get("id") if isinstance(img, dict) else None
        if type(image_id) is not int:
            raise ValueError(f"{path}: images[{k}] has no integer 'id'")
        if image_id in refs:
            raise ValueError(f"{path}: images[{k}]: duplicate image id {image_id}")
        refs[image_id] = []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or type(ann.get("image_id")) is not int or not isinstance(ann.get("caption"), str):
            raise ValueError(f"{path}: annotations[{k}] needs an integer 'image_id' and a string 'caption'")
        if ann["image_id"] not in refs:
            raise ValueError(f"{path}: annotations[{k}]: image_id {ann['image_id']} is not in 'images'")
        refs[ann["image_id"]].append(ann["caption"])
    empty = [i for i, captions in refs.items() if not captions]
    if empty:
        raise ValueError(f"{path}: {len(empty)} image(s) have no reference caption: {format_ids(empty)}")
    return refs


def load_results(path: Path) -> list[dict]:
    """Read an official results file. Its entries are validated where they are scored (`score_captions`)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: a results file is a JSON list of {{'image_id', 'caption'}}, got {type(data).__name__}"
        )
    return data


def write_results(results: Sequence[dict], path: Path) -> None:
    """Write the official results file `[{"image_id": int, "caption": str}]`, one entry per image, atomically."""
    seen: set[int] = set()
    rows = []
    for r in results:
        image_id, caption = r["image_id"], r["caption"]
        if type(image_id) is not int or not isinstance(caption, str):
            raise ValueError(f"results need an integer image_id and a string caption, got {image_id!r}: {caption!r}")
        if image_id in seen:
            raise ValueError(f"duplicate image_id {image_id} in the results")
        seen.add(image_id)
        rows.append({"image_id": image_id, "caption": caption})
    atomic_write_json(path, rows, indent=None)

