"""experiments/affinity.py on a tiny trained caption run: the figures of docs/design.md's "The affinity must not start
uniform", read at init and after training."""
from __future__ import annotations

import json

import pytest

import train_caption
from experiments import affinity
from tests.test_entry_points import caption_args
from tests.tiny_models import tiny_method_model, write_tiny_assets


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    assets = write_tiny_assets(tmp_path_factory.mktemp("assets"))
    out = tmp_path_factory.mktemp("run") / "caption"
    train_caption.main(caption_args(assets, out, "evaluate=false", "train.lr=5e-2"))
    return out


def read(run, *extra):
    return affinity.main(["--task", "caption", "--run", str(run), "--examples", "4", "--quiet", *extra])


def test_a_near_zero_init_gain_gives_a_uniform_affinity_and_the_default_does_not(run, tmp_path):
    flat = read(run, "--init", "--override", "model.excitor.affinity_init_gain=1e-6", "--out", str(tmp_path / "a"))
    default = read(run, "--init", "--out", str(tmp_path / "b"))
    assert [row["layer"] for row in flat["layers"]] == ["2", "3"]  # the top two of the tiny model's four layers
    for row in flat["layers"]:
        assert row["entropy_pct"] == pytest.approx(100, abs=1e-3) and row["logit_spread"] < 1e-4
        assert row["mix_varying_pct"] < 0.1
    for row in default["layers"]:
        assert row["entropy_pct"] < 99 and row["logit_spread"] > 0.1 and row["mix_varying_pct"] > 1
    for result in (flat, default):  # the gate is zero at init, so nothing reaches the keys yet
        assert all(row["gate_abs"] == 0 and row["shift_varying_pct"] == 0 for row in result["layers"])
    # Every prompt weighed alike: the visual prompts' share of the affinity is their share of the prompts.
    row = json.loads((tmp_path / "a").read_text())["layers"][0]
    assert row["learnable_prompts"] == 4 and row["prompts"] > 4
    assert row["visual_pct"] == pytest.approx(100 * (row["prompts"] - 4) / row["prompts"], abs=1e-3)


def test_a_trained_run_opens_its_gates_and_writes_next_to_the_run(run):
    result = read(run)
    assert result["state"] == "step-3" and (run / "affinity" / "step-3.json").is_file()
    assert all(row["gate_abs"] > 0 and row["shift_varying_pct"] > 0 for row in result["layers"])
    assert "| mean |" in result["table"]


def test_a_missing_run_is_one_error_line(tmp_path):
    import subprocess
    import sys

    from tests.test_entry_points import REPO

    result = subprocess.run([sys.executable, "-m", "experiments.affinity", "--task", "caption", "--run",
                             str(tmp_path / "absent")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "absent" in result.stderr


def test_a_model_without_excitor_blocks_is_refused():
    with pytest.raises(ValueError, match="no Excitor blocks"):
        affinity.measure(tiny_method_model("lora"), {"input_ids": None, "attention_mask": None})
