"""The Excitor's visual instruction tuning: frozen CLIP tokens enter only as per-sample prompts of the Excitor
blocks.

A trainable projection (Linear then LayerNorm, shared by all layers) maps the encoder's tokens to the prompts' width
(the LM width; the key width with `extra_key: direct`); each adapted layer adds its own offset and uses them next to
its learnable prompts. With `visual_projection: shared` one projection gives the Excitor's keys and values; with
`separate_kv` (the authors' multi-modal diagram) `projection` is Wk_Excitor and `value_projection` Wv_Excitor.
Nothing is prepended to the text, so sequences keep their length and the KV cache its size. One training stage:
projections and Excitor blocks train together, with no image-text alignment pre-training.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import ADDED_FIELDS, NON_ADAPTER_FIELDS, ExcitorConfig
from .model import apply_excitor, excitor_blocks
from ...identity import language_model_identity
from ...language_model import trainable_state_dict
from ...vision_language import AdapterHooks, VisualProjection
from ...vision import VisionEncoder
from ...visual_prompts import VisualPrompts
from ..prompted import PromptedModel


class MultimodalExcitor(PromptedModel):
    """A frozen causal LM that sees images through Excitor prompts."""

    method = "excitor"
    settings_sections = ("excitor",)
    non_adapter_fields = NON_ADAPTER_FIELDS
    added_fields = ADDED_FIELDS

    def __init__(
        self, language_model: nn.Module, tokenizer: Any, excitor_config: ExcitorConfig,
        vision: VisionEncoder | None = None, *, vision_identity: dict[str, Any] | None = None,
    ) -> None:
        if excitor_config.visual_prompt_mode is None:
            raise ValueError("a multimodal Excitor needs ExcitorConfig.visual_prompt_mode = 'concat' or 'add'")
        super().__init__(apply_excitor(language_model, excitor_config), tokenizer, vision,
                         vision_identity=vision_identity)
        width = excitor_blocks(self.language_model)[0].prompt_width
        self.projection = VisualProjection(self.vision_width, width).to(self.device)
        self.value_projection = (VisualProjection(self.vision_width, width).to(self.device)
                                 if excitor_config.visual_projection == "separate_kv" else None)

    @property
    def excitor_config(self) -> ExcitorConfig:
        return self.language_model.excitor_config

    def adapter_config(self) -> dict[str, Any]:
        return self.excitor_config.to_dict()

    def fsdp_units(self) -> list[nn.Module]:
        """Each Excitor block is one unit together with the frozen k_proj it wraps (it reads that k_proj's weight
        outside the k_proj's own forward, and FSDP gathers a unit's parameters around the unit's forward only); each
        visual projection is another."""
        projections = [p for p in (self.projection, self.value_projection) if p is not None]
        return [*excitor_blocks(self.language_model), *projections]

    @classmethod
    def language_only(cls, language_model: nn.Module) -> AdapterHooks | None:
        return LanguageOnlyExcitor(language_model) if excitor_blocks(language_model) else None

    @classmethod
    def adapt_language_model(cls, language_model: nn.Module, config: dict[str, Any]) -> nn.Module:
        return apply_excitor(language_model, ExcitorConfig.from_dict(config))

    def visual_prompts(self, tokens: torch.Tensor, has_image: torch.Tensor) -> VisualPrompts:
        """Every visual token, projected: each adapted layer adds its offset and joins them to its prompts."""
        values = None if self.value_projection is None else self.value_projection(tokens)
        return VisualPrompts(self.projection(tokens), has_image, values)


class LanguageOnlyExcitor:
    """The adapter hooks of a bare causal LM with Excitor blocks (`apply_excitor`: language-only, no encoder)."""

    method = "excitor"

    def __init__(self, language_model: nn.Module) -> None:
        self.language_model = language_model

    def adapter_metadata(self) -> dict[str, Any]:
        return {"method": self.method, "config": self.language_model.excitor_config.to_dict(),
                "identity": {"language_model": language_model_identity(self.language_model)}}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return trainable_state_dict(self.language_model)

    def fsdp_units(self) -> list[nn.Module]:
        return list(excitor_blocks(self.language_model))
