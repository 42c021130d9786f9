"""Inputs shared by the method tests on CPU (tests/test_methods.py) and on a GPU (tests/gpu/): a collated batch of
four prompts, some with visual tokens, and the adapter moved off its zero init."""
from __future__ import annotations

import torch

from data.collate import Collator
from tests.tiny_models import tiny_tokenizer

EXACT_WITH_IMAGES = ("excitor", "llama_adapter")
"""Methods whose zero-init tensor makes even rows with an image the base model at init (lora and prefix put a
prefix in front of them)."""
PROMPTS = ["red blue :", "a photo of the", "describe the image in one sentence .", "two :"]


def perturb(model, std=0.3, seed=7):
    """Move every trainable tensor off its init (zero gates, zero LoRA B), as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(std * torch.randn(parameter.shape, generator=generator))
    return model


def items(has_image=(True, False, True, True), key="visual_tokens", shape=(5, 8), targets=True):
    generator = torch.Generator().manual_seed(0)
    out = []
    for prompt, flag in zip(PROMPTS, has_image):
        item = {"prompt": prompt, "has_image": flag}
        if targets:
            item["target"] = "a red circle"
        if flag:
            item[key] = torch.randn(*shape, generator=generator)
        out.append(item)
    return out


def collator(key="visual_tokens", shape=(5, 8)):
    return Collator(tiny_tokenizer(), 64, blank={key: torch.zeros(*shape)})


def text_only(inputs):
    return {k: inputs[k] for k in ("input_ids", "attention_mask", "labels") if k in inputs}
