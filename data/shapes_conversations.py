"""Multi-turn visual conversations about shapes scenes, in LLaVA's visual-instruction format (the instruct task).

Every conversation asks about one object of its scene, then follows up on it without naming it again, so the
follow-up is answered from the image *and* the earlier turn:

    human: <image>\\nWhat shape is on the left?      gpt: a circle
    human: And what colour is it?                    gpt: red

A counting question ("How many shapes are there?", "How many red shapes are there?", never of the colour the pair
asks about) comes before or after that pair in two conversations out of three. Answers are short (a colour, "a {shape}", a number word), so greedy
answers are scored by exact match. The conversation ends with the follow-up or the count: the held-out turn the
evaluation answers always depends on the image. Same flags, same bytes: each conversation has its own generator
seeded by ``(seed, "conversations", index)``.

    python -m data.shapes_conversations --out .cache/shapes-conversations --num-images 2000 --seed 0

writes ``{train,val,test}.json`` (LLaVA records ``{"id", "image", "conversations"}``, ``image`` relative to
``images/``), the images under ``images/{split}/`` and ``manifest.json`` last.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from data.instruct import IMAGE_PLACEHOLDER
from data.shapes import add_config_arguments, config_from_args, split_names
from data.shapes_formats import SPLITS
from data.shapes_scene import PLACE, Scene, ShapeObject, ShapesConfig, article, item_rng, render_scene, sample_scene
from mm_excitor.cli import run_cli
from mm_excitor.io import atomic_write_json

NUMBER_WORDS = ("zero", "one", "two", "three")
Turn = tuple[str, str]


def where(scene: Scene, obj: ShapeObject) -> str:
    """How a question points at an object: its place, or "in the picture" when it is alone."""
    return "in the picture" if len(scene.objects) == 1 else PLACE[obj.position]


def object_pair(scene: Scene, obj: ShapeObject, rng: random.Random) -> list[Turn]:
    """A question about one attribute of `obj`, then a follow-up about the other that refers back to it."""
    shape_answer = f"{article(obj.shape)} {obj.shape}"
    if rng.random() < 0.5:
        return [(f"What shape is {where(scene, obj)}?", shape_answer), ("And what colour is it?", obj.colour)]
    return [(f"What colour is the shape {where(scene, obj)}?", obj.colour), ("And what shape is it?", shape_answer)]


def count_turn(scene: Scene, referent: ShapeObject, rng: random.Random) -> Turn:
    """How many shapes, or how many of a colour of the scene other than the referent's (which would give the
    follow-up's answer away in the question)."""
    others = sorted({o.colour for o in scene.objects} - {referent.colour})
    if not others or rng.random() < 0.5:
        return "How many shapes are there?", NUMBER_WORDS[len(scene.objects)]
    colour = rng.choice(others)
    count = sum(o.colour == colour for o in scene.objects)
    return f"How many {colour} shapes are there?", NUMBER_WORDS[count]


def conversation(scene: Scene, rng: random.Random) -> list[Turn]:
    """The pair about one object, with a count before it, after it, or none."""
    referent = rng.choice(scene.objects)
    turns = object_pair(scene, referent, rng)
    layout = rng.randrange(3)
    if layout == 1:
        turns = [count_turn(scene, referent, rng), *turns]
    elif layout == 2:
        turns = [*turns, count_turn(scene, referent, rng)]
    return turns


def llava_record(record_id: str, image: str, turns: list[Turn]) -> dict:
    """LLaVA's record: the `<image>` placeholder on its own line before the first question."""
    conversations = []
    for number, (question, answer) in enumerate(turns):
        value = f"{IMAGE_PLACEHOLDER}\n{question}" if number == 0 else question
        conversations += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    return {"id": record_id, "image": image, "conversations": conversations}


def generate_conversations(out_dir: Path | str, config: ShapesConfig, *, overwrite: bool = False) -> dict:
    """Write the split files, the images and `manifest.json` (last) under `out_dir`; return the manifest."""
    root = Path(out_dir)
    if (root / "manifest.json").exists() or (root / "images").exists():
        if not overwrite:
            raise FileExistsError(f"{root} holds a conversation set; pass --overwrite to replace it")
        shutil.rmtree(root / "images", ignore_errors=True)
        (root / "manifest.json").unlink(missing_ok=True)
    records: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for index, split in enumerate(split_names(config.num_images, config)):
        rng = item_rng(config.seed, "conversations", index)
        scene = sample_scene(config, rng)
        image = f"{split}/conv_{index + 1:06d}.png"
        path = root / "images" / image
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(scene, config).save(path, format="PNG")
        records[split].append(llava_record(f"conv-{index + 1:06d}", image, conversation(scene, rng)))
    for split, rows in records.items():
        atomic_write_json(root / f"{split}.json", rows, indent=None)
    manifest = {"config": dataclasses.asdict(config), "image_root": "images",
                "files": {split: f"{split}.json" for split in SPLITS},
                "conversations_per_split": {split: len(rows) for split, rows in records.items()}}
    atomic_write_json(root / "manifest.json", manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.shapes_conversations",
                                     description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    manifest = generate_conversations(args.out, config_from_args(args), overwrite=args.overwrite)
    print(f"wrote {args.out}: {manifest['conversations_per_split']} conversations in LLaVA format; "
          f"see {Path(args.out) / 'manifest.json'}")


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
