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
    for key in ("model_config", "excitor_configs", "lora_config", "batch", "seq_len", "frozen_lm_flops", "gpu"):
        assert key in tiny, key
    assert tiny["excitor_configs"]["excitor"]["key_association"] == "auto"
    assert tiny["forward"]["base"]["median_s"] > 0 and tiny["forward"]["excitor"]["median_s"] > 0
    assert len(tiny["forward"]["excitor"]["samples_s"]) == 1
    assert tiny["train_step"]["lora"]["median_s"] > 0
    variant = tiny["variants"]["excitor"]
    assert variant["forward_ratio_over_base"] > 0 and variant["step_ratio_over_lora"] > 0
    assert variant["training_association"] in ("prompt", "token")
    assert tiny["gpu"] == {"measured": False, "note": "not measured on a GPU (CPU run): no MFU, no CUDA peak memory"} \
        or env["device"].startswith("cuda")

    memory = tiny["memory"]
    assert "definition" in memory and variant["memory_ratio_over_lora"] > 0
    for side in ("excitor", "lora"):
        for key in ("peak_step_bytes", "resident_bytes", "peak_increment_bytes", "saved_activation_bytes"):
            assert memory[side][key] > 0, (side, key)
        assert memory[side]["peak_step_bytes"] == memory[side]["resident_bytes"] + memory[side]["peak_increment_bytes"]

    params = tiny["trainable_params"]
    # tiny: 2 layers x (K*C + 2*C*r + KV heads) = 2 * (5*64 + 2*64*4 + 2); LoRA: 3 layers x 2 x r*(C + C_out)
    assert params["excitor"] == 2 * (5 * 64 + 2 * 64 * 4 + 2)
    assert params["lora"] == 3 * 16 * ((64 + 64) + (64 + 32))
    assert "works" in params["adaption_prompt"]
    assert {"forward_overhead_le_target", "step_time_le_target", "peak_memory_le_lora"} <= set(variant["targets_met"])
    if env["device"] == "cpu":
        assert {"forward_overhead_le_target_cpu_time", "step_time_le_target_cpu_time"} <= set(variant["targets_met"])
    full = results["trainable_params_full_llama7b"]
    assert full["excitor"] == 30 * (30 * 4096 + 2 * 4096 * 16 + 32)  # the paper's 7,618,560 plus 30 x 32 gates
    assert full["lora"] == 32 * 2 * 16 * (4096 + 4096)
    assert "| tiny (2x16) | inference forward, auto -> " in results["table"]


def test_benchmark_with_visual_prompts_times_both_associations(tmp_path):
    from bench import excitor_overhead as bench

    out = tmp_path / "visual.json"
    bench.main(["--shapes", "tiny", "--visual-tokens", "7", "--associations", "auto,prompt,token", "--repeats", "1",
                "--warmup", "0", "--no-full-count", "--no-adaption-prompt", "--out", str(out), "--quiet"])
    results = json.loads(out.read_text())
    tiny = results["shapes"]["tiny"]
    assert tiny["visual_tokens_per_sample"] == 7 and "LLaVA-style" in tiny["lora_images"]
    assert set(tiny["visual_token_grad_bytes"].values()) == {2 * 7 * 64 * 4}  # per variant: B x N x C fp32
    assert tiny["targets"]["step_time_ratio_max"] == 1.10
    variants = tiny["variants"]
    assert set(variants) == {"excitor", "excitor_prompt_side", "excitor_token_side"}
    assert variants["excitor_prompt_side"]["training_association"] == "prompt"
    assert variants["excitor_token_side"]["training_association"] == "token"
    for name, variant in variants.items():
        assert tiny["excitor_configs"][name]["visual_prompt_mode"] == "concat"
        assert tiny["memory"][name]["saved_activation_bytes"] > 0
        assert variant["memory_ratio_without_visual_grad"] < variant["memory_ratio_over_lora"]
    assert "| tiny (2x16) + 7 visual tokens | train step, token side |" in results["table"]
    assert "peak without the visual tokens' gradient" in results["table"]


def test_bad_association_list_is_refused():
    import pytest

    from bench import excitor_overhead as bench

    with pytest.raises(SystemExit, match="--associations"):
        bench.main(["--shapes", "tiny", "--associations", "auto,keys", "--quiet"])


def test_frozen_lm_flops_and_mfu_arithmetic():
    from transformers import LlamaConfig

    from bench.timing import decoder_flops, model_flops_utilization, peak_tflops

    llama7b = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32000)
    weights = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 4096 * 32000  # 6.61e9 multiplied weights
    assert decoder_flops(llama7b, 1, 1, backward=False) == 2 * weights + 32 * 4 * 4096
    tokens, seq = 16 * 64, 64
    forward = 2 * weights * tokens + 32 * 16 * 4 * seq * seq * 4096
    assert decoder_flops(llama7b, 16, 64, backward=False) == forward
    assert decoder_flops(llama7b, 16, 64, backward=True) == forward + 2 * weights * tokens + 2 * 32 * 16 * 4 * seq * seq * 4096
    gqa = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152)
    assert decoder_flops(gqa, 1, 1, backward=False) == 2 * (30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
                                                            + 576 * 49152) + 30 * 4 * 576
    # 1e15 FLOPs in 2 s on a 989.4 TFLOP/s H100: 50.5% of its peak.
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("Some GPU") is None and peak_tflops("Some GPU", 100.0) == 100.0
    assert abs(model_flops_utilization(10**15, 2.0, 989.4) - 0.50536) < 1e-4
    assert model_flops_utilization(10**15, 2.0, None) is None


def test_cuda_accounting_says_why_it_is_absent_on_cpu():
    import torch

    from bench.timing import autocast, gpu_accounting

    assert gpu_accounting(torch.device("cpu"), None)["measured"] is False
    with autocast(torch.device("cpu"), torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
