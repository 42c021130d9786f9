"""bench/delia.py end to end on the tiny assets: self-sampling, one run per R with its mix, unseen-paraphrase scores,
retention against the base model, JSON + Markdown + plot; a rerun trains nothing again."""
from __future__ import annotations

import json

import pytest

from bench import delia
from tests.tiny_models import TINY_ASSETS_CLIP, write_tiny_assets

WORDS = "describe the red circle in one sentence|is the blue square left of the triangle|what is the answer".split("|")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = write_tiny_assets(tmp_path_factory.mktemp("assets"))
    with open(root / "pool.jsonl", "w") as handle:  # a qa pool in the tiny tokenizer's words
        for i in range(12):
            handle.write(json.dumps({"id": f"p{i}", "query": WORDS[i % 3] + " ?" * (i % 2),
                                     "answer": f"a {['red', 'green', 'blue'][i % 3]} circle ."}) + "\n")
    return root


def argv(assets, tmp_path) -> list[str]:
    coco = assets / "shapes" / "coco"
    overrides = [
        f"model.vision.model_name={TINY_ASSETS_CLIP}", "model.vision.token_grid=null",
        f"model.vision.model_config_file={assets / (TINY_ASSETS_CLIP + '.json')}",
        "model.excitor.num_layers=2", "model.excitor.num_prompts=4", "model.excitor.rank=4",
        f"data.annotations={coco / 'dataset_coco.json'}", f"data.image_root={coco / 'images'}",
        "data.max_length=48", "train.warmup_steps=1", "train.progress_bar=false", "train.num_workers=0",
        "decoding.batch_size=8", "decoding.max_new_tokens=4",
    ]
    return ["--model", str(assets / "lm"), "--pool", str(assets / "pool.jsonl"), "--holdout", "4",
            "--ratios", "0,0.5,1", "--task-items", "6", "--eval-items", "4", "--epochs", "1", "--batch-size", "4",
            "--max-new-tokens", "4", "--sample-batch-size", "4", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"), "--retention-max-length", "48",
            *[arg for value in overrides for arg in ("--override", value)]]


def test_the_ablation_runs_end_to_end_and_resumes(assets, tmp_path, capsys):
    results = delia.main(argv(assets, tmp_path))
    assert [row["ratio"] for row in results["rows"]] == [0.0, 0.5, 1.0]
    assert [row["delia_items"] for row in results["rows"]] == [0, 3, 6]
    assert [row["steps"] for row in results["rows"]] == [2, 3, 3]  # one epoch over 6, 9 and 12 items
    samples = [json.loads(line) for line in open(results["samples"])]
    assert len(samples) == results["sampled"] == 6
    for row in results["rows"]:
        assert set(row["image"]) == set(row["blind"]) == set(delia.COLUMNS)
        assert row["retention_nll"] > 0
        stored = json.loads((tmp_path / "out" / f"R{row['ratio']:g}" / "train_config.json").read_text())
        assert stored["run_config"]["data"]["delia"]["ratio"] == row["ratio"]
        assert stored["run_config"]["data"]["paraphrases"] == {"name": "shapes_json", "eval": "unseen", "seed": 0}
        assert ("delia" in stored["data"]) == (row["ratio"] > 0)
    assert results["base_nll"] > 0 and results["retention_items"] == 4
    assert json.loads((tmp_path / "out" / "delia.json").read_text())["rows"][2]["ratio"] == 1.0
    assert "| 0.5 | 3 | 3 |" in (tmp_path / "out" / "delia.md").read_text()
    assert (tmp_path / "out" / "delia.png").stat().st_size > 1000
    capsys.readouterr()
    delia.main(argv(assets, tmp_path))  # every stage is cached: nothing is trained or sampled again
    again = capsys.readouterr().out
    assert all(f"R={r}: done before" in again for r in ("0", "0.5", "1")) and "mm_excitor.delia sample" not in again


def test_a_pool_too_small_for_the_largest_ratio_is_a_one_line_error(assets, tmp_path):
    with pytest.raises(SystemExit, match="needs 12 to sample"):
        delia.main([*argv(assets, tmp_path), "--ratios", "0,2"])
