"""experiments/method_params.py counts what the closed-form formulas give (defaults: Excitor K=30 r=16 on 30 layers,
LoRA r=16 on q and v, LLaMA-Adapter 10 prompts on 30 layers, LLaVA-1.5's 2-layer MLP, prefix-tuning's 10
virtual tokens; ViT-L/14 width 1024)."""
from __future__ import annotations


def test_trainable_parameter_counts_match_the_formulas(tmp_path):
    from experiments import method_params

    counts = method_params.main(["--out", str(tmp_path / "params.json"), "--quiet"])["counts"]
    for shape, (width, layers, heads, kv_heads) in {"smollm2-135m": (576, 30, 9, 3),
                                                     "llama-7b": (4096, 32, 32, 32)}.items():
        kv_width = width // heads * kv_heads
        linear_norm = 1024 * width + width + 2 * width  # VisualProjection: LayerNorm o Linear(1024 -> C)
        mlp = 1024 * width + width + width * width + width  # Linear, GELU, Linear
        expected = {
            "excitor": 30 * (30 * width + 2 * width * 16 + kv_heads + width) + linear_norm,
            "lora": layers * 16 * ((width + width) + (width + kv_width)) + mlp,
            "llama_adapter": 30 * (10 * width + heads) + linear_norm,
            "prefix": mlp,
            "text_prefix": 10 * layers * 2 * kv_width,  # 10 virtual tokens' keys and values in every layer
        }
        got = {method: c["trainable"] for method, c in counts[shape].items()}
        assert got == expected, shape
    assert counts["llama-7b"]["llama_adapter"]["in_language_model"] == 1_228_800 + 30 * 32  # the paper's 1.2M
