"""`python -m tasks.generate caption` / `python -m tasks.generate scienceqa` on a tiny run trained for 2 steps."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import train_caption
from mm_excitor.cli import run_cli
from mm_excitor.decoding import Decoding
from tasks import generate
from tests.tiny_models import TINY_ASSETS_CLIP, tiny_model, tiny_tokenizer, write_tiny_assets


def cli(task: str, argv: list[str]) -> int:
    """`python -m tasks.generate TASK ...` as a user runs it: exit status 0, or 2 with one `error:` line."""
    return run_cli(generate.main, [task, *argv])


def tiny_recipe(root: Path, output_dir: Path) -> dict:
    """A caption recipe for the tiny assets (what a user's --config YAML holds)."""
    coco = root / "shapes" / "coco"
    return {
        "model": {
            "language_model": str(root / "lm"), "dtype": "float32", "attn_implementation": "eager",
            "excitor": {"num_layers": 2, "num_prompts": 4, "rank": 4, "visual_prompt_mode": "concat"},
            "vision": {"model_name": TINY_ASSETS_CLIP, "model_config_file": str(root / f"{TINY_ASSETS_CLIP}.json")},
        },
        "data": {"train_annotations": str(coco / "dataset_coco.json"), "image_root": str(coco / "images"),
                 "max_length": 32},
        "train": {"max_steps": 2, "warmup_steps": 1, "batch_size": 4, "lr": 1e-2, "precision": "fp32",
                  "output_dir": str(output_dir), "num_workers": 0, "save_every_steps": 1, "eval_every_steps": 100,
                  "progress_bar": False, "tensorboard": False, "device": "cpu"},
        "decoding": {"batch_size": 8, "max_new_tokens": 4},
        "evaluate": False,
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = write_tiny_assets(tmp_path_factory.mktemp("generate-cli"))
    out = root / "run"
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root, out)))
    train_caption.main(["--config", str(recipe)])
    test_ids = [i["cocoid"] for i in json.loads((root / "shapes" / "coco" / "dataset_coco.json").read_text())["images"]
                if i["split"] == "test"]
    return SimpleNamespace(root=root, out=out, recipe=recipe, test_ids=test_ids)


def _no_generation(*args, **kwargs):
    raise AssertionError("model.generate called: a finished output was regenerated")


def test_generate_writes_the_official_results_file_and_resumes(run, tmp_path, monkeypatch, capsys):
    results = tmp_path / "R.json"
    argv = ["--config", str(run.recipe), "--checkpoint", str(run.out / "checkpoints" / "step-2"),
            "--split", "test", "--output", str(results)]
    assert cli("caption", argv) == 0
    captions = json.loads(results.read_text())
    assert [r["image_id"] for r in captions] == run.test_ids  # one per test image, in dataset order
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str) for r in captions)
    meta = json.loads((tmp_path / "R.meta.json").read_text())
    assert meta["decoding"] == Decoding(batch_size=8, max_new_tokens=4).as_dict()  # the config's
    assert meta["source"]["split"] == "test" and meta["source"]["images"] is True

    # a rerun resumes: every id is in the part file, so nothing is generated again
    from mm_excitor.methods.excitor import MultimodalExcitor

    before = results.read_bytes()
    monkeypatch.setattr(MultimodalExcitor, "generate", _no_generation)
    assert cli("caption", argv) == 0
    assert results.read_bytes() == before

    # the parts of step-2 are not mixed with another checkpoint's, nor with other decoding settings
    capsys.readouterr()
    other = ["--config", str(run.recipe), "--checkpoint", str(run.out / "checkpoints" / "step-1"),
             "--output", str(results)]
    assert cli("caption", other) == 2
    assert "--no-resume" in capsys.readouterr().err
    assert cli("caption", argv + ["decoding.num_beams=2"]) == 2
    assert "decoding.num_beams: journal 1, now 2" in capsys.readouterr().err


def test_a_run_output_dir_is_config_and_checkpoint(run, tmp_path, monkeypatch):
    """--config runs/x: the stored run config and the latest checkpoint; CLI flags override the decoding."""
    results = tmp_path / "blind.json"
    assert cli("caption", ["--config", str(run.out), "--output", str(results), "--image-blind",
                         "decoding.max_new_tokens=3"]) == 0
    assert [r["image_id"] for r in json.loads(results.read_text())] == run.test_ids
    meta = json.loads((tmp_path / "blind.meta.json").read_text())
    assert meta["decoding"]["max_new_tokens"] == 3 and meta["decoding"]["batch_size"] == 8
    assert meta["source"]["images"] is False


def test_shards_launched_by_hand_are_merged_by_the_last_one(run, tmp_path):
    """--rank/--world-size without torchrun (what torchrun's RANK/WORLD_SIZE give each process)."""
    results = tmp_path / "R.json"
    base = ["--config", str(run.out), "--output", str(results), "--world-size", "2"]
    assert cli("caption", base + ["--rank", "1"]) == 0
    assert not results.exists()  # rank 0's shard is missing: nothing to merge yet
    assert cli("caption", base + ["--rank", "0"]) == 0
    assert [r["image_id"] for r in json.loads(results.read_text())] == run.test_ids
    assert json.loads((tmp_path / "R.meta.json").read_text())["world_size"] == 2


@pytest.mark.skipif(shutil.which("java") is None, reason="caption scoring needs Java")
def test_generate_then_score(run, tmp_path):
    results = tmp_path / "R.json"
    assert cli("caption", ["--config", str(run.out), "--output", str(results), "--score",
                         "decoding.max_new_tokens=2"]) == 0
    scores = json.loads((tmp_path / "caption_scores.json").read_text())
    assert {"Bleu_4", "CIDEr", "METEOR", "ROUGE_L"} <= set(scores["metrics"])


def test_a_checkpoint_of_another_base_model_is_refused(run, tmp_path, capsys):
    other = tmp_path / "other-lm"
    tiny_model(seed=1).save_pretrained(other)  # same architecture, other weights
    tiny_tokenizer().save_pretrained(other)
    results = tmp_path / "R.json"
    code = cli("caption", ["--config", str(run.recipe), "--checkpoint", str(run.out), "--output",
                         str(results), f"model.language_model={other}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not fit this model" in err and "weights_fingerprint" in err
    assert not results.exists()


def test_a_config_of_the_other_task_is_named(run, tmp_path, capsys):
    recipe = tmp_path / "sqa.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"root": str(run.root / "shapes" / "scienceqa")}}))
    assert cli("caption", ["--config", str(recipe), "--checkpoint", str(run.out),
                         "--output", str(tmp_path / "R.json")]) == 2
    assert "is a scienceqa run config; use `python -m tasks.generate scienceqa`" in capsys.readouterr().err


def test_scienceqa_generate_answers_and_scores(run, tmp_path):
    """The same loader and loop for ScienceQA (the caption adapter fits: same model section)."""
    sqa = tiny_recipe(run.root, run.out)
    sqa["data"] = {"root": str(run.root / "shapes" / "scienceqa"), "max_length": 256}
    recipe = tmp_path / "sqa.yaml"
    recipe.write_text(yaml.safe_dump(sqa))
    answers = tmp_path / "answers.jsonl"
    assert cli("scienceqa", ["--config", str(recipe), "--checkpoint", str(run.out), "--output",
                           str(answers), "--score"]) == 0
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    problems = json.loads((run.root / "shapes" / "scienceqa" / "problems.json").read_text())
    assert {r["question_id"] for r in rows} == {pid for pid, p in problems.items() if p["split"] == "test"}
    assert json.loads((tmp_path / "scienceqa_results.json").read_text())["results"]


def test_decoding_overrides_take_the_types_of_the_decoding_fields():
    from mm_excitor.recipe import ConfigError

    decoding = generate.decoding_with(Decoding(), ["decoding.num_beams=3", "decoding.do_sample=false",
                                                   "decoding.top_p=0.5", "decoding.max_new_tokens=7"])
    assert decoding == Decoding(num_beams=3, do_sample=False, top_p=0.5, max_new_tokens=7)
    assert isinstance(decoding.top_p, float) and isinstance(decoding.num_beams, int)
    with pytest.raises(ConfigError, match=r"unknown decoding setting 'decoding.beams=2'; valid: .*decoding.num_beams="):
        generate.decoding_with(Decoding(), ["decoding.beams=2"])
    with pytest.raises(ConfigError, match="decoding.num_beams='two': expected int"):
        generate.decoding_with(Decoding(), ["decoding.num_beams=two"])
    with pytest.raises(ConfigError, match="decoding.do_sample='maybe': expected bool"):
        generate.decoding_with(Decoding(), ["decoding.do_sample=maybe"])
