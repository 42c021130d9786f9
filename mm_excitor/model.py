"""Adding Excitor blocks to a Hugging Face LLaMA-family causal LM, and inspecting the result."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ExcitorConfig
from .layer import ExcitorKeyProjection
from .visual_prompts import accept_in_generate

TESTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedModelError(ValueError):
    """The model is not a decoder-only LM whose attention computes keys with a `k_proj` linear layer."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a `*ForCausalLM` (or its bare `*Model`), checked to have `self_attn.k_proj`."""
    backbone = getattr(model, "model", model)
    layers = getattr(backbone, "layers", None)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or not all(
        isinstance(getattr(getattr(layer, "self_attn", None), "k_proj", None), (nn.Linear, ExcitorKeyProjection))
        for layer in layers
    ):
        raise UnsupportedModelError(
            f"cannot add Excitor blocks to model_type={model_type!r}: expected a LLaMA-family causal LM with "
            f"`model.layers[i].self_attn.k_proj` linear layers (tested: {', '.join(TESTED_MODEL_TYPES)})"
        )
    return layers


def excitor_blocks(model: nn.Module) -> list[ExcitorKeyProjection]:
    return [module for module in model.modules() if isinstance(module, ExcitorKeyProjection)]


def apply_excitor(model: nn.Module, config: ExcitorConfig) -> nn.Module:
    """Freeze every parameter of `model` and add Excitor blocks to its topmost `config.num_layers` layers, in place.

    At init the gates are zero, so the model computes exactly what it computed before. Visual prompts reach the
    blocks as the model's keyword argument `visual_prompts` (a `VisualPrompts`, see mm_excitor/visual_prompts.py).
    """
    if excitor_blocks(model):
        raise ValueError("this model already has Excitor blocks; apply_excitor must be called once per base model")
    layers = decoder_layers(model)
    if config.num_layers > len(layers):
        raise ValueError(
            f"ExcitorConfig.num_layers={config.num_layers} exceeds the model's {len(layers)} decoder layers"
        )
    model_config = model.config
    num_kv_heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    model.requires_grad_(False)
    for layer in layers[len(layers) - config.num_layers :]:
        attention = layer.self_attn
        attention.k_proj = ExcitorKeyProjection(attention.k_proj, num_kv_heads, config)
        attention.k_proj.attach(attention)
    accept_in_generate(model)
    model.excitor_config = config
    return model


def gate_values(model: nn.Module) -> list[torch.Tensor]:
    """The effective gate of each adapted layer (bottom to top), for logging and plots."""
    return [block.gate_values().detach().float().cpu() for block in excitor_blocks(model)]


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {100 * self.fraction:.4f}"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameter counts (works on the meta device: nothing is allocated)."""
    trainable = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return ParameterCount(trainable=trainable, total=total)
