"""The format-following task over the one-object shapes images: answer with the JSON object
{"colour": c, "shape": s} (tasks.shapes_json). Its truth is read from the image's caption, "a {colour} {shape}"
(data/SHAPES.md, --difficulty simple), in the Karpathy-format file the caption task reads.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from data.coco import read_karpathy
from data.errors import DataError
from data.prompts import instruction_example
from data.shapes_scene import PALETTE, SHAPES

PARAPHRASE_SET = "shapes_json"
"""data/delia/paraphrases_shapes_json.json: its canonical text is the task's instruction."""


@dataclass(frozen=True)
class ShapesJsonExample:
    image_path: Path
    image_key: str
    image_id: int
    colour: str
    shape: str


def answer_json(colour: str, shape: str) -> str:
    """The one answer format: `{"colour": "red", "shape": "circle"}`."""
    return json.dumps({"colour": colour, "shape": shape})


def shapes_json_example(instruction: str, colour: str, shape: str) -> tuple[str, str]:
    """(prompt, target): the instruction template of data.prompts with the JSON answer."""
    return instruction_example(instruction, answer_json(colour, shape))


def parse_caption(caption: str) -> tuple[str, str] | None:
    """(colour, shape) of a one-object caption, or None unless it names exactly one colour and one shape."""
    words = re.findall(r"[a-z]+", caption.lower())
    colours = [w for w in words if w in PALETTE]
    shapes = [w for w in words if w in SHAPES]
    return (colours[0], shapes[0]) if len(colours) == 1 and len(shapes) == 1 else None


def load_shapes_json(annotations: str | Path, image_root: str | Path, split: str, limit: int | None = None,
                     seed: int = 0) -> list[ShapesJsonExample]:
    """The split's images with their truth, in file order; `limit` keeps a seeded sample of that many (the
    low-resource slice), still in file order. A caption that is not one coloured shape is an error."""
    images = read_karpathy(annotations, image_root, split)
    examples = []
    for image in images:
        truth = parse_caption(image.references[0]) if image.references else None
        if truth is None:
            raise DataError(annotations, f"image id {image.image_id}", f"caption {image.references[:1]} is not "
                            "'a {colour} {shape}' (make the set with --difficulty simple)")
        examples.append(ShapesJsonExample(image.image_path, image.image_key, image.image_id, *truth))
    if limit is not None and limit < len(examples):
        keep = set(random.Random(seed).sample(range(len(examples)), limit))
        examples = [example for i, example in enumerate(examples) if i in keep]
    return examples
