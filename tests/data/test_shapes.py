"""The synthetic shapes generator: determinism, the two official formats, and text that matches the pixels.

Caption checks read the rendered PNGs back (objects = runs of non-background columns, colour = majority palette
colour, size from the extent, shape from how much of its box the object fills), so they test the images against
the text rather than the generator against itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from data.shapes import ShapesConfig, ShapesManifest, generate_shapes_dataset
from data.shapes_questions import AnswerSlots, scene_question, to_problem
from data.shapes_scene import (BACKGROUND, PALETTE, PLACE, RADIUS, SHAPES, SIZES, caption_scene, item_rng,
                               sample_scene)

REPO = Path(__file__).resolve().parents[2]
SIZE = 96  # big enough for the fill ratio to tell a small triangle from a small star
_NP = re.compile(rf"\b(a|an|two|three) (?:(small|large) )?({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})s?\b")
_COUNT = {"a": 1, "an": 1, "two": 2, "three": 3}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapesManifest:
    config = ShapesConfig(num_images=90, num_questions=400, seed=7, image_size=SIZE, background_noise=8)
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), config, progress=False)


@pytest.fixture(scope="module")
def simple(tmp_path_factory: pytest.TempPathFactory) -> ShapesManifest:
    config = ShapesConfig(num_images=40, num_questions=0, seed=1, image_size=SIZE, difficulty="simple")
    return generate_shapes_dataset(tmp_path_factory.mktemp("simple"), config, progress=False)


@pytest.fixture(scope="module")
def problems(shapes: ShapesManifest) -> dict[str, dict]:
    return json.loads(shapes.scienceqa_problems.read_text())


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _pixel_objects(path: Path) -> list[tuple[str, str, str, float]]:
    """(size, colour, shape, centre x as a fraction of the width) of each object, left to right."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    side = pixels.shape[1]
    foreground = np.abs(pixels - BACKGROUND).max(-1) > 40
    palette = np.array(list(PALETTE.values()))
    columns = np.flatnonzero(foreground.any(0))
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1) if columns.size else []
    objects = []
    for run in runs:
        mask = np.zeros_like(foreground)
        mask[:, run[0]:run[-1] + 1] = foreground[:, run[0]:run[-1] + 1]
        ys, xs = np.nonzero(mask)
        nearest = np.abs(pixels[mask][:, None, :] - palette[None]).sum(-1).argmin(1)
        colour = list(PALETTE)[Counter(nearest.tolist()).most_common(1)[0][0]]
        width, height = np.ptp(xs) + 1, np.ptp(ys) + 1
        # Every shape's extent lies between 1.6 r (square) and 2 r (circle): split small and large halfway.
        size = "large" if max(width, height) > (RADIUS["small"] + 0.8 * RADIUS["large"]) * side else "small"
        fill = mask.sum() / (width * height)
        shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle" if fill > 0.485 else "star"
        objects.append((size, colour, shape, (xs.mean() + 0.5) / side))
    return objects


def _parse(caption: str) -> list[tuple[int, str, str, str]]:
    """Noun phrases in order: (count, size, colour, shape)."""
    return [(_COUNT[m[0]], m[1], m[2], m[3]) for m in _NP.findall(caption)]


def _runs(objects: list[tuple[str, str, str, float]]) -> list[tuple[int, str, str, str]]:
    runs: list[tuple[int, str, str, str]] = []
    for size, colour, shape, _ in objects:
        if runs and runs[-1][1:] == (size, colour, shape):
            runs[-1] = (runs[-1][0] + 1, size, colour, shape)
        else:
            runs.append((1, size, colour, shape))
    return runs


def _column(x: float) -> str:
    return "left" if x < 1 / 3 else "middle" if x < 2 / 3 else "right"


def _karpathy(manifest: ShapesManifest) -> list[dict]:
    return json.loads(manifest.coco_karpathy.read_text())["images"]


# ----------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    config = ShapesConfig(num_images=24, num_questions=24, seed=5, background_noise=4)
    hashes = [_tree_hash(generate_shapes_dataset(tmp_path / name, cfg, progress=False).root)
              for name, cfg in (("a", config), ("b", config), ("c", dataclasses.replace(config, seed=6)))]
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]


def test_existing_output_is_kept_unless_overwrite(shapes: ShapesManifest) -> None:
    with pytest.raises(FileExistsError):
        generate_shapes_dataset(shapes.root, shapes.config, progress=False)


# ----------------------------------------------------------------------------------------------------------- COCO


def test_official_caption_files_load_with_pycocotools_and_images_exist(shapes: ShapesManifest) -> None:
    seen: set[int] = set()
    for split, path in shapes.coco_captions.items():
        coco = COCO(str(path))
        ids = coco.getImgIds()
        assert len(ids) == shapes.images_per_split[split] > 0
        assert seen.isdisjoint(ids)
        seen.update(ids)
        for ann in coco.loadAnns(coco.getAnnIds()):
            info = coco.imgs[ann["image_id"]]
            with Image.open(shapes.coco_image_root / f"{split}2014" / info["file_name"]) as image:
                assert image.size == (info["width"], info["height"]) == (SIZE, SIZE)
        assert all(len(coco.imgToAnns[i]) == shapes.config.captions_per_image for i in ids)
    assert len(seen) == shapes.config.num_images


def test_karpathy_file_has_the_fields_and_disjoint_splits_matching_the_official_files(
        shapes: ShapesManifest) -> None:
    images = _karpathy(shapes)
    official = {s: json.loads(p.read_text()) for s, p in shapes.coco_captions.items()}
    split_ids: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    sentids = []
    for imgid, image in enumerate(images):
        assert {"filepath", "filename", "split", "sentences", "sentids", "imgid", "cocoid"} <= image.keys()
        assert image["imgid"] == imgid and image["filepath"] == f"{image['split']}2014"
        assert (shapes.coco_image_root / image["filepath"] / image["filename"]).is_file()
        split_ids[image["split"]].add(image["cocoid"])
        for sentence in image["sentences"]:
            assert sentence["imgid"] == imgid
            assert sentence["tokens"] == re.findall(r"[a-z]+", sentence["raw"])
            sentids.append(sentence["sentid"])
        refs = [a["caption"] for a in official[image["split"]]["annotations"] if a["image_id"] == image["cocoid"]]
        assert refs == [s["raw"] for s in image["sentences"]]
    assert sentids == list(range(len(sentids)))
    assert sum(len(ids) for ids in split_ids.values()) == len(set().union(*split_ids.values())) == len(images)
    assert {s: len(ids) for s, ids in split_ids.items()} == {"train": 72, "val": 9, "test": 9}


# ------------------------------------------------------------------------------------------ captions vs. pixels


def test_every_caption_names_the_rendered_objects_in_their_order(shapes: ShapesManifest) -> None:
    structures = Counter()
    for image in _karpathy(shapes):
        objects = _pixel_objects(shapes.coco_image_root / image["filepath"] / image["filename"])
        groups = _runs(objects)
        structures[len(groups)] += 1
        for k, sentence in enumerate(image["sentences"]):
            raw = sentence["raw"]
            assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", raw), raw
            said = _parse(raw)
            if k == 0 or not re.search("right of|right to left|between", raw):
                expected = groups  # the canonical caption and the left-to-right templates
            elif "between" in raw:
                expected = [groups[1], groups[0], groups[2]]
            else:
                expected = groups[::-1]
            assert said == expected, (image["filename"], raw, objects)
            for place, phrase in PLACE.items():
                if len(objects) == 1 and raw.endswith(phrase):
                    assert _column(objects[0][3]) == place, (image["filename"], raw)
    assert set(structures) == {1, 2, 3}


def test_simple_mode_draws_one_object_and_captions_its_size_colour_and_shape(simple: ShapesManifest) -> None:
    colours = Counter()
    for image in _karpathy(simple):
        [(size, colour, shape, x)] = _pixel_objects(simple.coco_image_root / image["filepath"] / image["filename"])
        colours[colour] += 1
        assert image["sentences"][0]["raw"] == f"a {size} {colour} {shape}"
        assert _column(x) == "middle"
    assert len(colours) >= 4  # colours vary from image to image


def test_a_single_size_drops_the_size_word() -> None:
    config = ShapesConfig(difficulty="simple", sizes=("large",), captions_per_image=1)
    for index in range(30):
        rng = item_rng(config.seed, "coco", index)
        scene = sample_scene(config, rng)
        [caption] = caption_scene(scene, config, rng)
        obj = scene.objects[0]
        assert caption == f"{'an' if obj.colour == 'orange' else 'a'} {obj.colour} {obj.shape}"


# ------------------------------------------------------------------------------------------------------- ScienceQA


def test_problems_have_the_official_fields_and_valid_answers(problems: dict[str, dict]) -> None:
    for pid, p in problems.items():
        assert list(p) == ["question", "choices", "answer", "hint", "image", "task", "grade", "subject", "topic",
                           "category", "skill", "lecture", "solution", "split"]
        assert 2 <= len(p["choices"]) <= 5 and len(set(p["choices"])) == len(p["choices"]), pid
        assert isinstance(p["answer"], int) and 0 <= p["answer"] < len(p["choices"]), pid
        assert p["task"] == "closed choice" and p["grade"] in {f"grade{g}" for g in range(1, 13)}
        assert p["subject"] in {"natural science", "social science", "language science"}
        assert all(p[k] for k in ("question", "topic", "category", "skill", "lecture", "solution"))


def test_answer_letters_are_balanced(problems: dict[str, dict]) -> None:
    by_count: dict[int, Counter] = {}
    for p in problems.values():
        by_count.setdefault(len(p["choices"]), Counter())[p["answer"]] += 1
    for n, letters in by_count.items():
        counts = [letters[i] for i in range(n)]
        assert max(counts) - min(counts) <= 1, (n, counts)
    assert Counter(p["answer"] for p in problems.values())[0] < 0.45 * len(problems)


def test_contexts_follow_the_official_txt_img_no_definitions(shapes: ShapesManifest,
                                                            problems: dict[str, dict]) -> None:
    root = shapes.scienceqa_image_root
    for pid, p in problems.items():
        if p["image"] is not None:
            assert p["image"] == "image.png"
            with Image.open(root / p["split"] / pid / p["image"]) as image:
                assert image.size == (SIZE, SIZE)
        else:
            assert not (root / p["split"] / pid).exists()
    txt = [p for p in problems.values() if p["hint"]]
    img = [p for p in problems.values() if p["image"]]
    no = [p for p in problems.values() if not p["hint"] and not p["image"]]
    text_only = [p for p in txt if not p["image"]]
    both = [p for p in txt if p["image"]]
    assert txt and img and no and text_only and both
    test = [p for p in problems.values() if p["split"] == "test"]  # the breakdown columns of the official scorer
    assert {p["subject"] for p in test} == {"natural science", "social science", "language science"}
    grades = {int(p["grade"].removeprefix("grade")) for p in test}
    assert min(grades) <= 6 < max(grades)


def test_image_questions_need_the_image_and_text_only_ones_are_answered_by_the_hint(
        shapes: ShapesManifest, problems: dict[str, dict]) -> None:
    checked = Counter()
    for pid, p in problems.items():
        answer = p["choices"][p["answer"]]
        if p["image"]:
            # (A neighbour may share the shape of the shape it is asked about: "...left of the red star?" "star".)
            if not p["question"].startswith("Which shape is directly"):
                assert not re.search(rf"\b{re.escape(answer)}\b", p["question"] + " " + p["hint"]), pid
            if p["question"].startswith("What colour"):
                colours = {o[1] for o in _pixel_objects(shapes.scienceqa_image_root / p["split"] / pid / p["image"])}
                assert answer in colours, pid
                checked["image colour"] += 1
        elif p["hint"] and re.match("What colour|What size|Where is", p["question"]):
            assert answer in p["hint"], pid
            checked["hint"] += 1
    assert checked["image colour"] > 10 and checked["hint"] > 10


def _blind_accuracy(config: ShapesConfig, kind: str, rule, n: int = 3000) -> tuple[float, float]:
    """(accuracy of a text-only `rule`, chance) over the `kind` questions of `n` scenes; `rule(choices)` returns
    the indices it finds equally good, scored as a fraction."""
    slots = AnswerSlots(random.Random(0))
    hits = chance = total = 0.0
    for index in range(n):
        rng = item_rng(config.seed, "test", index)
        question = scene_question(sample_scene(config, rng), config, rng)
        if question.kind != kind:
            continue
        problem = to_problem(question, rng, slots, hint="", image="image.png", split="test")
        picked = rule(problem["choices"])
        hits += (problem["answer"] in picked) / len(picked)
        chance += 1 / len(problem["choices"])
        total += 1
    assert total > 300, (kind, total)
    return hits / total, chance / total


def _most_shared_words(choices: list[str]) -> list[int]:
    words = Counter(w for c in choices for w in set(c.split()))
    scores = [sum(words[w] for w in set(c.split())) for c in choices]
    return [i for i, s in enumerate(scores) if s == max(scores)]


@pytest.mark.parametrize("difficulty", ["simple", "compositional"])
def test_sentence_options_do_not_give_the_answer_away(difficulty: str) -> None:
    # When each wrong sentence changed one attribute of the answer, this rule found it 72% of the time (chance 32%).
    config = ShapesConfig(difficulty=difficulty, sizes=("large",) if difficulty == "simple" else SIZES)
    accuracy, chance = _blind_accuracy(config, "describe", _most_shared_words)
    assert abs(accuracy - chance) < 0.06, (accuracy, chance)


def test_count_options_of_one_object_scenes_are_counts_it_can_have() -> None:
    # With "2" and "3" among the options of a one-object scene, picking "0" or "1" was right 66% of the time (chance 36%).
    config = ShapesConfig(difficulty="simple", sizes=("large",))
    accuracy, chance = _blind_accuracy(config, "count", lambda choices: [i for i, c in enumerate(choices) if c in ("0", "1")])
    assert chance == 0.5 and accuracy == 0.5


def test_pid_splits_are_disjoint_and_cover_every_problem(shapes: ShapesManifest,
                                                         problems: dict[str, dict]) -> None:
    splits = json.loads(shapes.scienceqa_pid_splits.read_text())
    assert set(splits) == {"train", "val", "test", "trainval", "minitrain", "minival", "minitest"}
    base = [splits[s] for s in ("train", "val", "test")]
    assert sorted(sum(base, []), key=int) == sorted(problems, key=int)
    assert len(set(sum(base, []))) == len(problems)
    assert splits["trainval"] == splits["train"] + splits["val"]
    for split in ("train", "val", "test"):
        assert all(problems[pid]["split"] == split for pid in splits[split])
        assert splits[f"mini{split}"] and set(splits[f"mini{split}"]) <= set(splits[split])


# ------------------------------------------------------------------------------------------------------------- CLI


def test_cli_writes_a_tiny_dataset_and_refuses_to_overwrite_silently(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "data.shapes", "--out", str(tmp_path / "out"), "--num-images", "10",
           "--seed", "3", "--num-questions", "12", "--difficulty", "simple", "--sizes", "large", "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["coco"]["images_per_split"] == {"train": 8, "val": 1, "test": 1}
    assert sum(manifest["scienceqa"]["questions_per_split"].values()) == 12
    assert len(list((tmp_path / "out" / "coco" / "images").rglob("*.png"))) == 10
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert subprocess.run([*cmd, "--overwrite"], cwd=REPO, capture_output=True, timeout=60).returncode == 0


def test_config_rejects_unknown_vocabulary() -> None:
    with pytest.raises(ValueError, match="colours"):
        ShapesConfig(colours=("red", "teal"))
    with pytest.raises(ValueError, match="max_objects"):
        ShapesConfig(max_objects=4)
