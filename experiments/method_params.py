"""Trainable parameters of every method (`model.method`) with its default settings, on the real shapes.

    .venv/bin/python experiments/method_params.py            # table + experiments/results/method_params.json

Each model is built through the methods' own `build` on the meta device (nothing is allocated or downloaded):
SmolLM2-135M (30 layers, 576 wide, GQA 9/3 heads) and LLaMA-7B (32 layers, 4096 wide, 32 heads), both fed ViT-L/14
tokens (257 x 1024, the paper's encoder). Counts are split into what sits in the LM (Excitor blocks, LoRA
matrices, adaption prompts, the language-only text_prefix's keys and values) and the visual projection, and are checked against closed-form counts in
tests/test_experiments_method_params.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from mm_excitor.factory import ModelConfig, method_model  # noqa: E402
from mm_excitor.methods import METHODS  # noqa: E402
from mm_excitor.language_model import count_parameters  # noqa: E402
from mm_excitor.recipe import to_dict  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "method_params.json"
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
}
VIT_L_14 = {"model_name": "ViT-L-14-quickgelu", "num_tokens": 257, "width": 1024}


def count(shape: str, method: str, config: ModelConfig) -> dict[str, int]:
    with torch.device("meta"):
        language_model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape]))
    model = method_model(dataclasses.replace(config, method=method), language_model, None, vision_identity=VIT_L_14)
    in_lm = count_parameters(model.language_model).trainable
    return {"trainable": count_parameters(model).trainable, "in_language_model": in_lm,
            "visual_projection": count_parameters(model).trainable - in_lm,
            "frozen_language_model": count_parameters(model.language_model).total - in_lm}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = ModelConfig()
    counts = {shape: {method: count(shape, method, config) for method in sorted(METHODS)} for shape in SHAPES}
    lines = ["| method | " + " | ".join(SHAPES) + " |", "|---|" + "---|" * len(SHAPES)]
    for method in sorted(METHODS):
        cells = [f"{counts[s][method]['trainable']:,} ({counts[s][method]['in_language_model']:,} + "
                 f"{counts[s][method]['visual_projection']:,})" for s in SHAPES]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    settings = {name: to_dict(getattr(config, name)) for name in ("excitor", "lora", "llama_adapter", "prefix", "text_prefix")}
    results = {"counts": counts, "vision": VIT_L_14, "settings": settings, "table": "\n".join(lines),
               "command": "python experiments/method_params.py " + " ".join(argv or [])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.quiet:
        print("trainable parameters: total (in the LM + visual projection), ViT-L/14 tokens")
        print(results["table"])
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
