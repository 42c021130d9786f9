"""Prefix-tuning (Li and Liang, 2021) through peft's PrefixTuning: the language-only baseline of general
instruction tuning (the visual `prefix` method trains only its projector, so without images it has nothing to train).

Every decoder layer attends to `num_virtual_tokens` learnable keys and values placed before the sequence (peft's
`PrefixEncoder`, one embedding row per virtual token holding every layer's key and value, handed to the frozen LM as
its `past_key_values`; with GQA they have the KV heads). Unlike the zero-gated methods, prefix tuning changes the
model's outputs at init: the queries attend to the random prefix at once.

Positions: the prefix stands for `num_virtual_tokens` tokens before the text, so a row's first real token sits at
position `num_virtual_tokens` (peft adds it to the position ids it is given, in the forward and in its cached
generation, where `generate` derives them from the left-padded mask). The forward passes `cumsum(mask) - 1`, so
training (right-padded), scoring and generation (left-padded) see a row the same whatever its padding.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from peft import PrefixTuningConfig, get_peft_model
from torch import nn

from ..decoding import Decoding
from ..language_model import keep_trainable_in_fp32
from ..recipe import check_positive_ints
from ..vision_language import VisionLanguageModel
from ..vision import VisionEncoder


@dataclass
class TextPrefixSettings:
    """Prefix-tuning's length (its keys and values in every layer are the trainable tensor)."""

    num_virtual_tokens: int = 10
    """Learnable key/value positions before the sequence in every layer (LLaMA-Adapter's prompt length)."""

    def __post_init__(self) -> None:
        check_positive_ints(self, "model.text_prefix", "num_virtual_tokens")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TextPrefixModel(VisionLanguageModel):
    """A frozen causal LM with peft prefix-tuning; language-only (a row with an image is an error)."""

    method = "text_prefix"
    settings_sections = ("text_prefix",)
    takes_images = False
    # The prefix enters every layer of every call.
    ddp_find_unused_parameters = False

    def __init__(
        self, language_model: nn.Module, tokenizer: Any, settings: TextPrefixSettings,
        vision: VisionEncoder | None = None, *, vision_identity: dict[str, Any] | None = None,
    ) -> None:
        language_model.requires_grad_(False)
        super().__init__(language_model, tokenizer, vision, vision_identity=vision_identity)
        self.settings = settings
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=settings.num_virtual_tokens)
        with warnings.catch_warnings():  # peft's own check of gradient checkpointing calls a deprecated property
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.language_model = get_peft_model(language_model, config)
        keep_trainable_in_fp32(self.language_model)

    def adapter_config(self) -> dict[str, Any]:
        return self.settings.to_dict()

    @staticmethod
    def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        """Each row's real tokens at 0, 1, ... whatever its padding (peft shifts them past the prefix), as `generate`
        gives a left-padded prompt."""
        return (attention_mask.long().cumsum(1) - 1).clamp(min=0)

    def forward_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
        tokens: torch.Tensor | None, has_image: torch.Tensor, loss_kwargs: dict[str, Any],
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                   position_ids=self.position_ids(attention_mask), **loss_kwargs)

    def generate_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor | None,
        has_image: torch.Tensor, decoding: Decoding,
    ) -> torch.Tensor:
        return self.generate_new_tokens(input_ids, attention_mask, decoding)
