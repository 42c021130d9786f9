"""The recipe of docs/architecture.md, "Adding a benchmark", followed in one file: a colour-naming task on tiny
generated images. Each section below stands for one of the recipe's files; the task then trains, evaluates with its
image-blind control and generates through the shared commands with nothing else changed."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

import tasks
from data.datasets import VisualDataset
from mm_excitor.decoding import Decoding
from mm_excitor.io import atomic_write_json, atomic_write_jsonl, read_answer_texts
from tasks.base import DataConfig, RunConfig, Task, TaskData, VisualSource, blank_of, data_fingerprint
from tests.tiny_models import TINY_ASSETS_CLIP, TINY_CLIP_CONFIG, tiny_model, tiny_tokenizer

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


# --- eval/colour.py: the scorer, torch-free ----------------------------------------------------------------------

def write_answers(records: list[dict], path: Path) -> None:
    atomic_write_jsonl(path, ({"image_id": r["id"], "prompt": r["prompt"], "text": r["text"]} for r in records))


def score_answers_file(path: Path, truth: Mapping[int, str], out_dir: Path, allow_subset: bool) -> dict[str, float]:
    answers = read_answer_texts(path, "image_id", int)
    if set(answers) != set(truth) and not allow_subset:
        raise ValueError(f"{path}: answers for {len(answers)} of {len(truth)} images")
    right = sum(text.strip().lower() == truth[i] for i, text in answers.items())
    metrics = {"accuracy": 100 * right / len(answers)}
    atomic_write_json(Path(out_dir) / "colour_scores.json", {**metrics, "n": len(answers)})
    return metrics


# --- tasks/colour.py: config, dataset and Task ---------------------------------------------------------------------

@dataclass
class ColourDataConfig(DataConfig):
    annotations: str = ""
    """JSON list of {"image_id", "file", "colour", "split"}; files relative to it."""
    max_length: int = 24


@dataclass
class ColourRunConfig(RunConfig):
    data: ColourDataConfig = field(default_factory=ColourDataConfig)
    decoding: Decoding = field(default_factory=lambda: Decoding(batch_size=4, max_new_tokens=2))


@dataclass(frozen=True)
class ColourImage:
    image_id: int
    image_path: Path
    image_key: str
    colour: str


class ColourDataset(VisualDataset):
    set_name = "colour set"

    def item(self, record: ColourImage) -> dict[str, Any]:
        return {"prompt": "the image is", "target": f" {record.colour}", "has_image": True,
                "meta": {"image_id": record.image_id, "image_key": record.image_key, "colour": record.colour}}


@dataclass
class ColourData(TaskData):
    truth: dict[int, str] | None = None


class ColourTask(Task):
    name = "colour"
    config_class = ColourRunConfig
    id_key = "image_id"
    output_name = "answers.jsonl"

    def build_data(self, config: ColourRunConfig, visual: VisualSource,
                   splits: Iterable[str] = ("train", "val", "eval")) -> ColourData:
        data, root = config.data, Path(config.data.annotations).parent
        rows = json.loads(Path(data.annotations).read_text())

        def split(name: str | None, wanted: str) -> ColourDataset | None:
            if not name or wanted not in splits:
                return None
            records = [ColourImage(r["image_id"], root / r["file"], r["file"], r["colour"]) for r in rows
                       if r["split"] == name]
            return ColourDataset(records, **visual.dataset_options(data.on_bad_image))

        train, test = split("train", "train"), split(data.eval_split, "eval")
        identity = data_fingerprint([r.image_key, r.colour] for r in train.records) if train else {}
        truth = {r.image_id: r.colour for r in test.records} if test else None
        return ColourData(train, None, test, blank=blank_of(train, test), identity=identity, truth=truth)

    def write_outputs(self, records: list[dict], path: Path) -> None:
        write_answers(records, path)

    def score(self, outputs: Path, config: Any, data: ColourData, out_dir: Path, decoding: Decoding,
              allow_subset: bool = False) -> dict[str, float]:
        return score_answers_file(outputs, data.truth, out_dir, allow_subset)


# --- tasks/__init__.py (one entry in TASKS), configs/colour.yaml and train_colour.py --------------------------------

@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, ColourTask.name, ColourTask())


def write_colour_set(root: Path) -> Path:
    """12 solid-colour 32 px images, 4 of them the test split."""
    rows = []
    for n in range(12):
        colour = list(COLOURS)[n % 3]
        Image.new("RGB", (32, 32), COLOURS[colour]).save(root / f"{n}.png")
        rows.append({"image_id": n, "file": f"{n}.png", "colour": colour, "split": "test" if n >= 8 else "train"})
    (root / "colours.json").write_text(json.dumps(rows))
    return root / "colours.json"


def write_recipe(root: Path, output_dir: Path) -> Path:
    tiny_model().save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    (root / f"{TINY_ASSETS_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    recipe = {
        "model": {"language_model": str(root / "lm"), "dtype": "float32", "attn_implementation": "eager",
                  "excitor": {"num_layers": 2, "num_prompts": 4, "rank": 4},
                  "vision": {"model_name": TINY_ASSETS_CLIP,
                             "model_config_file": str(root / f"{TINY_ASSETS_CLIP}.json")}},
        "data": {"annotations": str(write_colour_set(root))},
        "train": {"max_steps": 2, "warmup_steps": 1, "batch_size": 4, "output_dir": str(output_dir),
                  "num_workers": 0, "save_every_steps": 1, "progress_bar": False, "tensorboard": False,
                  "device": "cpu"},
    }
    path = root / "colour.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_new_benchmark_trains_evaluates_and_generates_through_the_shared_code(registered, tmp_path):
    from mm_excitor.cli import run_cli
    from tasks import generate
    from tasks.run import train

    recipe = write_recipe(tmp_path, tmp_path / "run")
    summary = train(tasks.get_task("colour"), ["--config", str(recipe)])  # train_colour.py's one line
    assert summary["steps"] == 2
    assert set(summary["eval"]) == {"image", "blind"} and 0 <= summary["eval"]["image"]["accuracy"] <= 100
    answers = tmp_path / "run" / "eval" / "step-2" / "image" / "answers.jsonl"
    assert sorted(json.loads(line)["image_id"] for line in answers.read_text().splitlines()) == [8, 9, 10, 11]

    output = tmp_path / "cli" / "answers.jsonl"
    assert run_cli(generate.main, ["colour", "--config", str(tmp_path / "run"), "--output", str(output),
                                   "--score", "decoding.max_new_tokens=1"]) == 0
    assert json.loads((output.parent / "colour_scores.json").read_text())["n"] == 4
    assert json.loads(output.with_name("answers.meta.json").read_text())["decoding"]["max_new_tokens"] == 1
