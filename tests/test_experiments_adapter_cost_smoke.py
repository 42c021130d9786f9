"""Smoke test of experiments/adapter_cost.py: two token counts, one repeat; checks the JSON's fields and the
deterministic memory accounting, never timings."""
import json


def test_adapter_cost_writes_the_sweep_and_its_fitted_lines(tmp_path):
    from experiments import adapter_cost as bench

    out = tmp_path / "adapter_cost.json"
    bench.main(["--shape", "smollm2-135m", "--tokens", "8,16", "--repeats", "1", "--warmup", "0",
                "--out", str(out), "--quiet"])
    results = json.loads(out.read_text())
    assert [row["tokens"] for row in results["sweep"]] == [8, 16]
    for row in results["sweep"]:
        assert set(row["adapter_s"]) == {"excitor", "excitor_prompt_side", "excitor_token_side", "lora"}
        assert row["frozen_s"] > 0 and row["auto_association"] in ("prompt", "token")
        # Memory is deterministic: saved input (tokens x 576 fp32) for both, LoRA's two rank-16 activations,
        # and 16 bytes of trainable state per parameter (Excitor 30*576 + 2*576*16 + 3 gates; LoRA q 576->576,
        # v 576->192 at r=16).
        tokens = row["tokens"]
        assert row["memory_bytes"]["lora"] == tokens * 576 * 4 + 2 * tokens * 16 * 4 + 16 * 16 * (576 * 2 + 576 + 192)
        assert row["saved_bytes"]["excitor"] >= tokens * 576 * 4
    assert results["trainable_state_bytes"]["excitor"] == 16 * (30 * 576 + 2 * 576 * 16 + 3)
    assert set(results["fits"]) == {"excitor", "excitor_prompt_side", "excitor_token_side"}
    assert all(set(fit) == {"time", "memory"} for fit in results["fits"].values())
    assert "| 8 |" in results["table"] and "token side / LoRA time" in results["table"]
