"""Synthetic shapes: a seeded generator of rendered scenes in the official COCO-captions and ScienceQA formats.

COCO and ScienceQA cannot be downloaded everywhere, so the demo, the tests and the learning benchmarks train on
this instead, through the same readers. Same config, same bytes: every item is drawn from its own generator
seeded by ``(seed, stream, index)``. See ``data/SHAPES.md`` for the options and the output layout.

    python -m data.shapes --out runs/shapes --num-images 1000 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data.shapes_formats import (SPLITS, CaptionedImage, coco_image_dir, write_coco,
                                 write_scienceqa)
from data.shapes_questions import AnswerSlots, knowledge_question, scene_question, to_problem
from data.shapes_scene import (PALETTE, SHAPES, SIZES, ShapesConfig, caption_scene, count_phrase, describe_scene,
                               item_rng, render_scene, sample_scene)
from mm_excitor.cli import run_cli
from mm_excitor.io import atomic_write_json

__all__ = ["ShapesConfig", "ShapesManifest", "generate_shapes_dataset", "main"]

# The text/image context of a question, i.e. which of TXT / IMG / NO it counts in.
CONTEXTS = ("image", "image+hint", "hint", "none")


@dataclass(frozen=True)
class ShapesManifest:
    """Where everything was written (paths under ``root``) and how much of it."""

    root: Path
    config: ShapesConfig
    coco_karpathy: Path
    coco_captions: dict[str, Path]  # split -> official-format file
    coco_image_root: Path
    scienceqa_root: Path
    scienceqa_problems: Path
    scienceqa_pid_splits: Path
    scienceqa_image_root: Path
    images_per_split: dict[str, int]
    captions: int
    questions_per_split: dict[str, int]
    questions_per_context: dict[str, int]

    def to_json(self) -> dict:
        """Paths relative to ``root``, so that the file is the same wherever the dataset lives."""
        def rel(path: Path) -> str:
            return path.relative_to(self.root).as_posix()

        return {
            "config": dataclasses.asdict(self.config),
            "coco": {"karpathy": rel(self.coco_karpathy),
                     "captions_files": {s: rel(p) for s, p in self.coco_captions.items()},
                     "image_root": rel(self.coco_image_root), "images_per_split": self.images_per_split,
                     "captions": self.captions},
            "scienceqa": {"root": rel(self.scienceqa_root), "problems": rel(self.scienceqa_problems),
                          "pid_splits": rel(self.scienceqa_pid_splits),
                          "image_root": rel(self.scienceqa_image_root),
                          "questions_per_split": self.questions_per_split,
                          "questions_per_context": self.questions_per_context},
        }


def generate_shapes_dataset(out_dir: Path | str, config: ShapesConfig, *, overwrite: bool = False,
                            progress: bool = True) -> ShapesManifest:
    """Write ``out_dir/coco``, ``out_dir/scienceqa`` and ``out_dir/manifest.json``. Images are written as they
    are drawn, so memory stays small; an existing output is replaced only with ``overwrite``."""
    root = Path(out_dir)
    _clear(root, overwrite)
    with tqdm(total=config.num_images + config.question_count, desc="shapes", unit="img",
              disable=not progress) as bar:
        coco = _generate_coco(root / "coco", config, bar)
        scienceqa = _generate_scienceqa(root / "scienceqa", config, bar)
    manifest = ShapesManifest(root=root, config=config, **coco, **scienceqa)
    atomic_write_json(root / "manifest.json", manifest.to_json())
    return manifest


def split_names(count: int, config: ShapesConfig) -> list[str]:
    """Contiguous train / val / test blocks of exact sizes (items are i.i.d., so blocks are random splits)."""
    val, test = round(count * config.val_fraction), round(count * config.test_fraction)
    return ["train"] * (count - val - test) + ["val"] * val + ["test"] * test


def _clear(root: Path, overwrite: bool) -> None:
    existing = [p for p in (root / "coco", root / "scienceqa", root / "manifest.json") if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace it")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _generate_coco(root: Path, config: ShapesConfig, bar: tqdm) -> dict:
    images = []
    for index, split in enumerate(split_names(config.num_images, config)):
        rng = item_rng(config.seed, "coco", index)
        scene = sample_scene(config, rng)
        image = CaptionedImage(index + 1, split, f"shape_{index + 1:06d}.png",
                               tuple(caption_scene(scene, config, rng)))
        path = root / "images" / coco_image_dir(split) / image.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(scene, config).save(path, format="PNG")
        images.append(image)
        bar.update()
    karpathy, captions = write_coco(root, images, config.image_size)
    return {"coco_karpathy": karpathy, "coco_captions": captions, "coco_image_root": root / "images",
            "images_per_split": {split: sum(im.split == split for im in images) for split in SPLITS},
            "captions": sum(len(im.captions) for im in images)}


def _contexts(config: ShapesConfig) -> list[str]:
    """Exact numbers of questions per context (so that TXT, IMG and NO are never empty by bad luck), shuffled."""
    n = config.question_count
    counts = [round(n * f) for f in (config.image_hint_fraction, config.text_only_fraction,
                                     config.no_context_fraction)]
    contexts = ["image"] * (n - sum(counts)) + [c for c, k in zip(CONTEXTS[1:], counts) for _ in range(k)]
    random.Random(f"{config.seed}/scienceqa/contexts").shuffle(contexts)
    return contexts


def _generate_scienceqa(root: Path, config: ShapesConfig, bar: tqdm) -> dict:
    slots = AnswerSlots(random.Random(f"{config.seed}/scienceqa/answers"))
    problems: dict[str, dict] = {}
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    contexts = _contexts(config)
    for index, (split, context) in enumerate(zip(split_names(config.question_count, config), contexts)):
        pid, rng = str(index + 1), item_rng(config.seed, "scienceqa", index)
        image, hint = None, ""
        if context == "none":
            question = knowledge_question(rng)
        else:
            scene = sample_scene(config, rng)
            question = scene_question(scene, config, rng)
            if context == "hint":
                hint = describe_scene(scene, config.mention_size)
            else:
                if context == "image+hint":  # a true context that does not give the answer away
                    hint = f"The picture shows {count_phrase(len(scene.objects), 'shape')}."
                image = "image.png"
                path = root / "images" / split / pid / image
                path.parent.mkdir(parents=True, exist_ok=True)
                render_scene(scene, config).save(path, format="PNG")
        problems[pid] = to_problem(question, rng, slots, hint=hint, image=image, split=split)
        splits[split].append(pid)
        bar.update()
    problems_path, splits_path = write_scienceqa(root, problems, splits)
    return {"scienceqa_root": root, "scienceqa_problems": problems_path, "scienceqa_pid_splits": splits_path,
            "scienceqa_image_root": root / "images",
            "questions_per_split": {s: len(p) for s, p in splits.items()},
            "questions_per_context": {c: contexts.count(c) for c in CONTEXTS}}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The ShapesConfig flags every shapes generator's command line shares (--out, --seed, the vocabulary...)."""
    defaults = ShapesConfig()
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--num-images", type=int, default=defaults.num_images)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--difficulty", choices=("simple", "compositional"), default=defaults.difficulty,
                        help="simple: one object per image, captions 'a small red circle'")
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects)
    parser.add_argument("--colours", default=",".join(defaults.colours), help=f"subset of {','.join(PALETTE)}")
    parser.add_argument("--shapes", default=",".join(defaults.shapes), help=f"subset of {','.join(SHAPES)}")
    parser.add_argument("--sizes", default=",".join(defaults.sizes),
                        help=f"subset of {','.join(SIZES)}; one size drops the size word from the text")
    parser.add_argument("--background-noise", type=int, default=defaults.background_noise,
                        help="amplitude of grey background noise, 0..30")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace, **extra: object) -> ShapesConfig:
    """The ShapesConfig of add_config_arguments' flags (and `extra` fields)."""
    return ShapesConfig(
        num_images=args.num_images, seed=args.seed, image_size=args.image_size, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, difficulty=args.difficulty, max_objects=args.max_objects,
        colours=tuple(args.colours.split(",")), shapes=tuple(args.shapes.split(",")),
        sizes=tuple(args.sizes.split(",")), background_noise=args.background_noise, **extra)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.shapes", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--captions-per-image", type=int, default=ShapesConfig().captions_per_image)
    parser.add_argument("--num-questions", type=int, default=None, help="default: --num-images")
    args = parser.parse_args(argv)
    config = config_from_args(args, captions_per_image=args.captions_per_image, num_questions=args.num_questions)
    manifest = generate_shapes_dataset(args.out, config, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"wrote {manifest.root}: {sum(manifest.images_per_split.values())} caption images "
          f"({manifest.captions} captions), {sum(manifest.questions_per_split.values())} questions; "
          f"see {manifest.root / 'manifest.json'}")


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
