"""The adapter methods a frozen LM can be tuned with, by the name a config selects them with (`model.method`)."""
from __future__ import annotations

from torch import nn

from ..vision_language import AdapterHooks, VisionLanguageModel
from .excitor import MultimodalExcitor
from .llama_adapter import LlamaAdapterModel
from .lora import LoraPrefixModel
from .prefix import VisualPrefixModel
from .text_prefix import TextPrefixModel

METHODS: dict[str, type[VisionLanguageModel]] = {
    "excitor": MultimodalExcitor,
    "lora": LoraPrefixModel,
    "llama_adapter": LlamaAdapterModel,
    "prefix": VisualPrefixModel,
    "text_prefix": TextPrefixModel,
}


def method_class(name: str) -> type[VisionLanguageModel]:
    if name not in METHODS:
        raise ValueError(f"unknown model.method {name!r}; one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def adapter_of(model: nn.Module) -> AdapterHooks | None:
    """The hooks of the adapter `model` carries (what checkpoints save, what FSDP wraps): a method's model is its own;
    a bare causal LM that a method adapted in place gets that method's `language_only` hooks; None without one."""
    if isinstance(model, VisionLanguageModel):
        return model
    found = (method.language_only(model) for method in METHODS.values())
    return next((hooks for hooks in found if hooks is not None), None)
