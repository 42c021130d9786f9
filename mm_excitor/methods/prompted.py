"""What the methods whose images enter as per-sample prompts of adapted layers share (the Excitor, LLaMA-Adapter):
the text keeps its length, and the projected visual tokens reach the adapted layers as the language model's
`visual_prompts` argument of this one call (mm_excitor/visual_prompts.py); beams get their rows' prompts where
`num_beams` is known."""
from __future__ import annotations

import abc
from typing import Any

import torch

from ..decoding import Decoding
from ..vision_language import VisionLanguageModel
from ..visual_prompts import KEYWORD, VisualPrompts


class PromptedModel(VisionLanguageModel):
    # Every trainable tensor takes part in every step: rows without an image still pass (zero) visual tokens,
    # masked out of their prompts, so the projection is in every graph.
    ddp_find_unused_parameters = False

    @abc.abstractmethod
    def visual_prompts(self, tokens: torch.Tensor, has_image: torch.Tensor) -> VisualPrompts:
        """What the adapted layers receive from the encoder's tokens (B x N_v x D): the prompts of this call."""

    def _prompt_kwargs(self, tokens: torch.Tensor | None, has_image: torch.Tensor, beams: int = 1) -> dict[str, Any]:
        if tokens is None:
            return {}
        prompts = self.visual_prompts(tokens, has_image)
        return {KEYWORD: prompts if beams == 1 else prompts.repeat_interleave(beams)}

    def forward_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
        tokens: torch.Tensor | None, has_image: torch.Tensor, loss_kwargs: dict[str, Any],
    ):
        return self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **loss_kwargs,
                                   **self._prompt_kwargs(tokens, has_image))

    def generate_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor | None,
        has_image: torch.Tensor, decoding: Decoding,
    ) -> torch.Tensor:
        # generate() expands each row to its beams with repeat_interleave; the prompts are expanded alike.
        return self.generate_new_tokens(input_ids, attention_mask, decoding,
                                        **self._prompt_kwargs(tokens, has_image, decoding.num_beams))
