"""The adapter methods a frozen LM can be tuned with, by the name a config selects them with (`model.method`)."""
from __future__ import annotations

from ..vision_language import VisionLanguageModel
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
