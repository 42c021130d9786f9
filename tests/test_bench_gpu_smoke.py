"""bench/gpu.py's stages on tiny shapes on the CPU (`--tiny`): the code the GPU run executes stays working."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.gpu import METHODS
from bench.gpu import main as gpu_bench

REPO = Path(__file__).resolve().parents[1]


def test_the_bench_stage_measures_every_method_and_the_ratios(tmp_path):
    out = tmp_path / "bench.json"
    results = gpu_bench(["bench", "--tiny", "--out", str(out)])
    assert json.loads(out.read_text())["verdicts"] == results["verdicts"]
    train = results["train_multimodal"]
    assert set(METHODS) <= set(train) and train["lora"]["step_over_lora"] == 1.0
    assert train["excitor"]["step_over_prefix"] > 0 and train["excitor"]["mfu_text"] is None  # no peak on a CPU
    assert set(results["train_language_only"]) >= {"excitor", "lora", "llama_adapter"}
    assert results["forward"]["excitor"]["over_bare_lm"] > 0
    generation = results["generation"]
    assert all(generation[f"{m}_{kind}"]["tokens_per_s"] > 0 for m in METHODS for kind in ("text", "images"))
    assert not any("error" in results[part] for part in ("train_multimodal", "forward", "generation"))


def test_the_e2e_stage_trains_the_recipe_and_returns_its_captions(tmp_path):
    out = tmp_path / "out"
    results = gpu_bench(["e2e", "--tiny", "--out", str(out / "e2e.json"), "--work", str(tmp_path / "work")])
    assert results["train"]["steps"] == 2 and results["train"]["tokens_per_s"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["captions.json", "captions.meta.json", "e2e.json"]
    assert len(json.loads((out / "captions.json").read_text())) == results["generate"]["captions"] > 0


def test_the_shell_wrapper_parses_and_refuses_a_missing_out():
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu.sh")]).returncode == 0
    refused = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh")], capture_output=True, text=True)
    assert refused.returncode == 2 and "--out DIR is required" in refused.stderr


def test_the_profile_stage_writes_the_forward_ratios_and_a_table_per_call(tmp_path):
    out = tmp_path / "profile.json"
    results = gpu_bench(["profile", "--tiny", "--out", str(out)])
    assert results["forward"]["excitor_text"]["over_bare_lm"] > 0
    assert results["forward"]["excitor_images"]["over_bare_lm"] > 0
    table = (tmp_path / "profile.txt").read_text()
    for call in ("forward bare_lm", "forward excitor_images", "train step excitor", "train step lora"):
        assert f"## {call} " in table
