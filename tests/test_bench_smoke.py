"""Smoke test of bench/excitor_overhead.py: a tiny shape, one repeat; checks the JSON's fields, never timings."""
from __future__ import annotations

import json


def test_benchmark_writes_json_with_all_fields(tmp_path):
    from bench import excitor_overhead as bench  # in the test, not at collection: loads torch and transformers

    out = tmp_path / "overhead.json"
    returned = bench.main(["--shapes", "tiny", "--repeats", "1", "--warmup", "0", "--threads", "1",
                           "--out", str(out), "--quiet"])
    results = json.loads(out.read_text())
    assert results["shapes"].keys() == returned["shapes"].keys() == {"tiny"}

    env = results["environment"]
    for key in ("torch", "transformers", "peft", "device", "torch_threads", "dtype_frozen_model", "repeats",
                "warmup", "command"):
        assert key in env, key
    assert env["repeats"] == 1 and env["torch_threads"] == 1

    tiny = results["shapes"]["tiny"]
    for key in ("model_config", "excitor_config", "lora_config", "batch", "seq_len"):
        assert key in tiny, key
    assert tiny["forward"]["base"]["median_s"] > 0 and tiny["forward"]["excitor"]["median_s"] > 0
    assert tiny["forward"]["ratio_excitor_over_base"] > 0
    assert len(tiny["forward"]["excitor"]["samples_s"]) == 1
    assert tiny["train_step"]["lora"]["median_s"] > 0 and tiny["train_step"]["ratio_excitor_over_lora"] > 0

    memory = tiny["memory"]
    assert "definition" in memory and memory["ratio_excitor_over_lora"] > 0
    for side in ("excitor", "lora"):
        for key in ("peak_step_bytes", "resident_bytes", "peak_increment_bytes", "saved_activation_bytes"):
            assert memory[side][key] > 0, (side, key)
        assert memory[side]["peak_step_bytes"] == memory[side]["resident_bytes"] + memory[side]["peak_increment_bytes"]

    params = tiny["trainable_params"]
    # tiny: 2 layers x (K*C + 2*C*r + KV heads) = 2 * (5*64 + 2*64*4 + 2); LoRA: 3 layers x 2 x r*(C + C_out)
    assert params["excitor"] == 2 * (5 * 64 + 2 * 64 * 4 + 2)
    assert params["lora"] == 3 * 16 * ((64 + 64) + (64 + 32))
    assert "works" in params["adaption_prompt"]
    assert {"forward_overhead_le_5pct", "step_time_le_lora", "peak_memory_le_lora"} <= set(tiny["targets_met"])
    if env["device"] == "cpu":
        assert {"forward_overhead_le_5pct_cpu_time", "step_time_le_lora_cpu_time"} <= set(tiny["targets_met"])
    full = results["trainable_params_full_llama7b"]
    assert full["excitor"] == 30 * (30 * 4096 + 2 * 4096 * 16 + 32)  # the paper's 7,618,560 plus 30 x 32 gates
    assert full["lora"] == 32 * 2 * 16 * (4096 + 4096)
    assert "| tiny (2x16) | inference forward |" in results["table"]


def test_adapter_cost_writes_the_sweep_and_its_fitted_lines(tmp_path):
    from bench import adapter_cost as bench

    out = tmp_path / "adapter_cost.json"
    bench.main(["--shape", "smollm2-135m", "--tokens", "8,16", "--repeats", "1", "--warmup", "0",
                "--out", str(out), "--quiet"])
    results = json.loads(out.read_text())
    assert [row["tokens"] for row in results["sweep"]] == [8, 16]
    for row in results["sweep"]:
        assert row["adapter_s"]["excitor"] > 0 and row["adapter_s"]["lora"] > 0
        # Memory is deterministic: saved input (tokens x 576 fp32) for both, LoRA's two rank-16 activations,
        # and 16 bytes of trainable state per parameter (Excitor 30*576 + 2*576*16 + 3 gates; LoRA q 576->576,
        # v 576->192 at r=16).
        tokens = row["tokens"]
        assert row["memory_bytes"]["lora"] == tokens * 576 * 4 + 2 * tokens * 16 * 4 + 16 * 16 * (576 * 2 + 576 + 192)
        assert row["saved_bytes"]["excitor"] >= tokens * 576 * 4
    assert results["trainable_state_bytes"]["excitor"] == 16 * (30 * 576 + 2 * 576 * 16 + 3)
    assert set(results["fits"]) == {"time", "memory"}
    assert "| 8 |" in results["table"]


def test_benchmark_with_visual_prompts_runs_the_excitor_in_concat_mode(tmp_path):
    from bench import excitor_overhead as bench

    out = tmp_path / "visual.json"
    bench.main(["--shapes", "tiny", "--visual-tokens", "7", "--repeats", "1", "--warmup", "0", "--no-full-count",
                "--no-adaption-prompt", "--out", str(out), "--quiet"])
    tiny = json.loads(out.read_text())["shapes"]["tiny"]
    assert tiny["visual_tokens_per_sample"] == 7
    assert tiny["excitor_config"]["visual_prompt_mode"] == "concat"
    # The visual prompts' gradient runs: more is saved for backward than the language-only block keeps.
    assert tiny["memory"]["excitor"]["saved_activation_bytes"] > 0
    assert "| tiny (2x16) + 7 visual tokens | train step |" in json.loads(out.read_text())["table"]
