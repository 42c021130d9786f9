"""What the methods whose images enter as per-sample prompts of adapted layers share (the Excitor, LLaMA-Adapter):
the text keeps its length, the projected visual tokens are handed to the adapted layers for the duration of one
call (`mm_excitor.model.visual_prompts`), and beams get their rows' prompts where `num_beams` is known."""
from __future__ import annotations

import abc
import contextlib
from typing import Any

import torch

from ..generation import Decoding
from ..model import visual_prompts
from ..multimodal import VisionLanguageModel


class PromptedModel(VisionLanguageModel):
    # Every trainable tensor takes part in every step: rows without an image still pass (zero) visual tokens,
    # masked out of their prompts, so the projection is in every graph.
    ddp_find_unused_parameters = False

    @abc.abstractmethod
    def prompt_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the adapted layers receive from the encoder's tokens (B x N_v x D): B x N x C, the LM width."""

    def _prompts(self, tokens: torch.Tensor | None, has_image: torch.Tensor) -> contextlib.AbstractContextManager:
        if tokens is None:
            return visual_prompts(self.language_model, None)
        return visual_prompts(self.language_model, self.prompt_tokens(tokens), has_image)

    def forward_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
        tokens: torch.Tensor | None, has_image: torch.Tensor, loss_kwargs: dict[str, Any],
    ):
        if self.training and getattr(self.language_model, "is_activation_checkpointing", False):
            raise ValueError(f"activation checkpointing recomputes the layers after the visual prompts are cleared; "
                             f"it is not supported for the {self.method!r} method")
        with self._prompts(tokens, has_image):
            return self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                       **loss_kwargs)

    def generate_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor | None,
        has_image: torch.Tensor, decoding: Decoding,
    ) -> torch.Tensor:
        beams = decoding.num_beams
        if tokens is not None and beams > 1:  # generate() expands each row to its beams with repeat_interleave
            tokens, has_image = tokens.repeat_interleave(beams, dim=0), has_image.repeat_interleave(beams, dim=0)
        with self._prompts(tokens, has_image):
            output = self.language_model.generate(
                input_ids=input_ids, attention_mask=attention_mask,
                **decoding.generate_kwargs(self.pad_token_id(), self.tokenizer.eos_token_id),
            )
        return output[:, input_ids.shape[1]:]
