"""What every method needs of the frozen causal LM, whatever adapts it: its decoder layers, its trainable
parameters (listed, grouped into FSDP units, counted, kept in fp32)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TESTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedModelError(ValueError):
    """The model is not a decoder-only LM whose attention computes keys with a `k_proj` linear layer."""


def key_projection(attention: nn.Module) -> nn.Linear | None:
    """The frozen linear layer that computes a layer's keys; a method that wraps `k_proj` keeps it as `.base`."""
    k_proj = getattr(attention, "k_proj", None)
    k_proj = getattr(k_proj, "base", k_proj)
    return k_proj if isinstance(k_proj, nn.Linear) else None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a `*ForCausalLM` (or its bare `*Model`), checked to have a linear `self_attn.k_proj`."""
    backbone = getattr(model, "model", model)
    layers = getattr(backbone, "layers", None)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or not all(
        key_projection(getattr(layer, "self_attn", None)) is not None for layer in layers
    ):
        raise UnsupportedModelError(
            f"cannot adapt model_type={model_type!r}: expected a LLaMA-family causal LM with "
            f"`model.layers[i].self_attn.k_proj` linear layers (tested: {', '.join(TESTED_MODEL_TYPES)})"
        )
    return layers


def top_decoder_layers(model: nn.Module, count: int, setting: str) -> list[nn.Module]:
    """The topmost `count` decoder layers, the ones a method adapts; `setting` names the count in the error."""
    layers = decoder_layers(model)
    if count > len(layers):
        raise ValueError(f"{setting}={count} exceeds the model's {len(layers)} decoder layers")
    return list(layers[len(layers) - count:])


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trains, selected by requires_grad rather than by a hand-written key list."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def trainable_units(model: nn.Module) -> list[nn.Module]:
    """Every maximal submodule of `model` whose parameters all train (a visual projection, LoRA's A and B linears,
    LLaMA-Adapter's prompts): the FSDP units of an adapter that reads no frozen tensor outside a frozen module's own
    forward. A container without a forward (peft keeps LoRA's A and B in ModuleDicts) is not a unit: FSDP hooks a
    module's forward, so its children are."""
    found = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        container = isinstance(module, (nn.ModuleDict, nn.ModuleList))
        if module is not model and not container and params and all(p.requires_grad for p in params):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return found


def keep_trainable_in_fp32(module: nn.Module) -> None:
    """Cast `module`'s trainable tensors to fp32 in place, whatever the frozen model's dtype (they train under
    autocast and are saved in fp32)."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()


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
