"""Adding Excitor blocks to a Hugging Face LLaMA-family causal LM, and inspecting the result."""
from __future__ import annotations

import torch
from torch import nn

from .config import ExcitorConfig
from .layer import ExcitorKeyProjection
from ...language_model import top_decoder_layers
from ...visual_prompts import accept_in_generate


def excitor_blocks(model: nn.Module) -> list[ExcitorKeyProjection]:
    return [module for module in model.modules() if isinstance(module, ExcitorKeyProjection)]


def apply_excitor(model: nn.Module, config: ExcitorConfig) -> nn.Module:
    """Freeze every parameter of `model` and add Excitor blocks to its topmost `config.num_layers` layers, in place.

    At init the gates are zero, so the model computes exactly what it computed before. Visual prompts reach the
    blocks as the model's keyword argument `visual_prompts` (a `VisualPrompts`, see mm_excitor/visual_prompts.py).
    """
    if excitor_blocks(model):
        raise ValueError("this model already has Excitor blocks; apply_excitor must be called once per base model")
    layers = top_decoder_layers(model, config.num_layers, "ExcitorConfig.num_layers")
    model_config = model.config
    num_kv_heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    model.requires_grad_(False)
    for layer in layers:
        attention = layer.self_attn
        attention.k_proj = ExcitorKeyProjection(attention.k_proj, num_kv_heads, config)
        attention.k_proj.attach(attention)
    accept_in_generate(model)
    model.excitor_config = config
    return model


def gate_values(model: nn.Module) -> list[torch.Tensor]:
    """The effective gate of each adapted layer (bottom to top), for logging and plots."""
    return [block.gate_values().detach().cpu() for block in excitor_blocks(model)]
