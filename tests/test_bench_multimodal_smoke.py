"""Smoke test of bench/multimodal_speed.py: tiny shapes, one repeat; checks the JSON's fields, never timings."""
from __future__ import annotations

import json


def test_benchmark_writes_json_with_all_fields(tmp_path):
    from bench import multimodal_speed as bench  # in the test, not at collection: loads torch and transformers

    out = tmp_path / "speed.json"
    returned = bench.main(["--language-model", "random", "--lm-shape", "tiny", "--repeats", "1", "--warmup", "0",
                           "--threads", "1", "--num-images", "4", "--batch", "2", "--train-seq", "8",
                           "--gen-batch", "2", "--new-tokens", "3", "--device", "cpu", "--out", str(out), "--quiet"])
    results = json.loads(out.read_text())
    assert results.keys() == returned.keys()

    env = results["environment"]
    for key in ("torch", "transformers", "device", "torch_threads", "dtype_frozen_lm", "repeats", "warmup",
                "command", "wall_s"):
        assert key in env, key
    assert env["repeats"] == 1 and env["torch_threads"] == 1 and env["device"] == "cpu"

    assert results["language_model"]["source"] == "random-init"
    assert results["excitor_config"]["visual_prompt_mode"] == "concat"
    assert results["excitor_config"]["key_association"] == "auto"
    assert results["targets"] == {"cache_over_in_memory_max": 1.05, "generation_over_bare_min": 0.95}
    assert results["frozen_lm_train_step_flops"] > 0
    tiny_vit = results["visions"]["tiny-vit"]
    assert tiny_vit["vision"]["num_tokens"] == 65 and tiny_vit["vision"]["width"] == 128  # Tiny-ViT
    assert tiny_vit["trainable_params"] > 0
    assert tiny_vit["feature_cache"]["images"] == 4 and tiny_vit["feature_cache"]["images_per_s"] > 0
    assert tiny_vit["gpu"]["measured"] is False and "not measured on a GPU" in tiny_vit["gpu"]["note"]

    check = tiny_vit["loss_check"]
    assert abs(check["loss_from_cache"] - check["loss_online"]) == check["abs_difference"] < 1e-3

    train = tiny_vit["train_step"]
    assert train["batch"] == 2 and train["seq_len"] == 8
    for side in ("in_memory", "from_cache", "online"):
        assert train[side]["median_s"] > 0 and len(train[side]["samples_s"]) == 1
    for key in ("from_cache_over_in_memory", "from_cache_over_in_memory_cpu_time", "online_over_in_memory",
                "from_cache_over_online"):
        assert train[key] > 0, key

    generation = tiny_vit["generation"]
    assert generation["batch"] == 2 and generation["new_tokens"] == 3
    for side in ("bare_lm", "language_only", "from_cache", "online"):
        assert generation[side]["tokens"] == 6 and generation[side]["tokens_per_s"] > 0
    for side in ("language_only", "from_cache", "online"):
        assert generation[side]["throughput_ratio_over_bare_lm"] > 0
    table = results["table"]
    assert "| tiny-vit (65x128) | train step, batch 2x8 (s)" in table and "MM, cached tokens" in table
    assert "cache / memory" in table and "Command: `python bench/multimodal_speed.py" in table


def test_unknown_vision_is_refused():
    import pytest

    from bench import multimodal_speed as bench

    with pytest.raises(SystemExit, match="unknown encoders"):
        bench.main(["--vision", "tiny-vit,vit-h-14", "--quiet"])
