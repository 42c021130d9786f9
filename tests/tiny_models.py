"""Tiny random-init LLaMA-family models built from configs (nothing is downloaded)."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

FAMILIES = {
    "llama-mha": (LlamaConfig, {"num_key_value_heads": 4}),
    "llama-gqa": (LlamaConfig, {"num_key_value_heads": 2}),
    "mistral": (MistralConfig, {"num_key_value_heads": 2, "sliding_window": None}),
    "qwen2": (Qwen2Config, {"num_key_value_heads": 2}),
}


def tiny_config(family: str = "llama-gqa", **overrides):
    config_class, extra = FAMILIES[family]
    values = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    values.update(extra)
    values.update(overrides)
    return config_class(**values)


def tiny_model(family: str = "llama-gqa", attn_implementation: str = "eager", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), attn_implementation=attn_implementation)
    return model.eval()
