"""LM + frozen CLIP + Excitor: visual tokens enter only as per-sample prompts of the Excitor blocks.

One trainable projection (Linear then LayerNorm, shared by all layers) maps the encoder's tokens to the LM width;
each adapted layer adds its own offset and uses them next to its learnable prompts. Nothing is prepended to the
text, so sequences keep their length and the KV cache its size. One training stage: projection and Excitor
blocks train together, with no image-text alignment pre-training.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .checkpoint import language_model_identity
from .config import ExcitorConfig
from .model import apply_excitor, set_visual_tokens
from .vision import VisionEncoder


class VisualProjection(nn.Module):
    """phi = LayerNorm o Linear(D -> C): puts visual tokens on the LM's hidden-state scale."""

    def __init__(self, vision_width: int, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_width, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(tokens.to(self.linear.weight.dtype)))


class MultimodalExcitor(nn.Module):
    """A frozen causal LM that sees images through Excitor prompts.

    Give it either a `vision` encoder (images in) or, when training from a feature cache, the identity of the
    encoder that made the cache (`vision_identity`) and its token width (`vision_width`).
    """

    def __init__(
        self,
        language_model: nn.Module,
        tokenizer: Any,
        excitor_config: ExcitorConfig,
        vision: VisionEncoder | None = None,
        *,
        vision_identity: dict[str, Any] | None = None,
        vision_width: int | None = None,
    ) -> None:
        super().__init__()
        if excitor_config.visual_prompt_mode is None:
            raise ValueError("a multimodal model needs ExcitorConfig.visual_prompt_mode = 'concat' or 'add'")
        if (vision is None) == (vision_identity is None):
            raise ValueError("give exactly one of `vision` (an encoder) or `vision_identity` (from a feature cache)")
        self.language_model = apply_excitor(language_model, excitor_config)
        self.tokenizer = tokenizer
        self.vision = vision
        self.vision_identity = vision.identity() if vision is not None else dict(vision_identity)
        width = vision.width if vision is not None else (vision_width or self.vision_identity["width"])
        device = language_model.get_input_embeddings().weight.device
        self.projection = VisualProjection(width, language_model.config.hidden_size).to(device)

    @property
    def excitor_config(self) -> ExcitorConfig:
        return self.language_model.excitor_config

    def adapter_identity(self) -> dict[str, Any]:
        return {"language_model": language_model_identity(self.language_model), "vision": self.vision_identity}

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.vision is None:
            raise ValueError("this model was built from a feature cache (no vision encoder): pass visual_tokens")
        return self.vision(images)

    def _set_visual_prompts(
        self,
        images: torch.Tensor | None,
        visual_tokens: torch.Tensor | None,
        has_image: torch.Tensor | None,
    ) -> None:
        if images is not None and visual_tokens is not None:
            raise ValueError("pass images or visual_tokens, not both")
        if images is None and visual_tokens is None:
            set_visual_tokens(self.language_model, None)
            return
        tokens = self.encode_images(images) if images is not None else visual_tokens
        expected = self.vision_identity["num_tokens"], self.vision_identity["width"]
        if tuple(tokens.shape[1:]) != expected:
            raise ValueError(f"visual tokens of shape {tuple(tokens.shape)} do not match the encoder's N x D = {expected}")
        device = self.projection.linear.weight.device
        set_visual_tokens(self.language_model, self.projection(tokens.to(device)),
                          None if has_image is None else has_image.to(device))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
    ):
        self._set_visual_prompts(images, visual_tokens, has_image)
        return self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        images: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 30,
        min_new_tokens: int = 0,
        num_beams: int = 1,
    ) -> list[str]:
        """Deterministic decoding (greedy or beam) of a batch; prompts are left-padded so that the output of an
        item does not depend on what else is in its batch."""
        was_training = self.training
        self.eval()
        device = self.language_model.get_input_embeddings().weight.device
        encoded = self.tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="pt").to(device)
        self._set_visual_prompts(images, visual_tokens, has_image)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        output = self.language_model.generate(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            do_sample=False,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        self.train(was_training)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
