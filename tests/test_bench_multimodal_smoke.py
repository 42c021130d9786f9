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
    assert results["vision"]["num_tokens"] == 65 and results["vision"]["width"] == 128  # Tiny-ViT
    assert results["trainable_params"] > 0
    assert results["feature_cache"]["images"] == 4 and results["feature_cache"]["images_per_s"] > 0

    check = results["loss_check"]
    assert abs(check["loss_from_cache"] - check["loss_online"]) == check["abs_difference"] < 1e-3

    train = results["train_step"]
    assert train["batch"] == 2 and train["seq_len"] == 8
    for side in ("from_cache", "online_encoder"):
        assert train[side]["median_s"] > 0 and len(train[side]["samples_s"]) == 1
    assert train["ratio_from_cache_over_online"] > 0 and train["cpu_time_ratio_from_cache_over_online"] > 0

    generation = results["generation"]
    assert generation["batch"] == 2 and generation["new_tokens"] == 3
    for side in ("bare_lm", "multimodal_from_cache", "multimodal_online_encoder"):
        assert generation[side]["tokens"] == 6 and generation[side]["tokens_per_s"] > 0
    for side in ("multimodal_from_cache", "multimodal_online_encoder"):
        assert generation[side]["throughput_ratio_over_bare_lm"] > 0
    assert "| train step, batch 2x8" in results["table"] and "MM, cached tokens" in results["table"]
