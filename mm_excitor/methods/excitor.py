"""The Excitor's visual instruction tuning: frozen CLIP tokens enter only as per-sample prompts of the Excitor
blocks.

One trainable projection (Linear then LayerNorm, shared by all layers) maps the encoder's tokens to the LM width;
each adapted layer adds its own offset and uses them next to its learnable prompts. Nothing is prepended to the
text, so sequences keep their length and the KV cache its size. One training stage: projection and Excitor
blocks train together, with no image-text alignment pre-training.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import ExcitorConfig
from ..generation import Decoding
from ..model import apply_excitor, visual_prompts
from ..multimodal import VisionLanguageModel, VisualProjection
from ..vision import VisionEncoder

if TYPE_CHECKING:
    from ..factory import ModelConfig


class MultimodalExcitor(VisionLanguageModel):
    """A frozen causal LM that sees images through Excitor prompts."""

    method = "excitor"
    # Every trainable tensor takes part in every step: text-only rows still pass (zero) visual tokens, masked out
    # of their prompts, so the projection and the offsets are in every graph.
    ddp_find_unused_parameters = False

    def __init__(
        self, language_model: nn.Module, tokenizer: Any, excitor_config: ExcitorConfig,
        vision: VisionEncoder | None = None, *, vision_identity: dict[str, Any] | None = None,
    ) -> None:
        if excitor_config.visual_prompt_mode is None:
            raise ValueError("a multimodal Excitor needs ExcitorConfig.visual_prompt_mode = 'concat' or 'add'")
        super().__init__(apply_excitor(language_model, excitor_config), tokenizer, vision,
                         vision_identity=vision_identity)
        self.projection = VisualProjection(self.vision_width, language_model.config.hidden_size).to(self.device)

    @classmethod
    def build(cls, language_model: nn.Module, tokenizer: Any, config: ModelConfig, vision: VisionEncoder | None,
              vision_identity: dict[str, Any] | None) -> MultimodalExcitor:
        return cls(language_model, tokenizer, config.excitor, vision, vision_identity=vision_identity)

    @property
    def excitor_config(self) -> ExcitorConfig:
        return self.language_model.excitor_config

    def adapter_config(self) -> dict[str, Any]:
        return self.excitor_config.to_dict()

    def _prompts(self, tokens: torch.Tensor | None, has_image: torch.Tensor | None, batch: int):
        if tokens is None:
            return visual_prompts(self.language_model, None)
        return visual_prompts(self.language_model, self.projection(tokens),
                              self.image_flags(batch, has_image, self.device))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | float | None = None,
    ):
        if self.training and getattr(self.language_model, "is_activation_checkpointing", False):
            raise ValueError("activation checkpointing recomputes the layers after the visual prompts are cleared; "
                             "it is not supported for the multimodal Excitor")
        batch = input_ids.shape[0]
        tokens = self.visual_tokens(batch, images, visual_tokens)
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        with self._prompts(tokens, has_image, batch):
            return self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra)

    def generate_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor | None,
        has_image: torch.Tensor, decoding: Decoding,
    ) -> torch.Tensor:
        beams = decoding.num_beams
        if tokens is not None and beams > 1:  # generate() expands each row to its beams with repeat_interleave
            tokens, has_image = tokens.repeat_interleave(beams, dim=0), has_image.repeat_interleave(beams, dim=0)
        with self._prompts(tokens, has_image, tokens.shape[0] if tokens is not None else 0):
            output = self.language_model.generate(
                input_ids=input_ids, attention_mask=attention_mask,
                **decoding.generate_kwargs(self.pad_token_id(), self.tokenizer.eos_token_id),
            )
        return output[:, input_ids.shape[1]:]
