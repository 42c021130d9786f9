"""The visual prefix baseline (ClipCap, LLaVA): projected visual tokens prepended to the frozen LM's input
embeddings; only the projector trains. `lora` adds LoRA on top of the same prefix (methods/lora.py).

Layout. Each row's prefix goes just before its first real token: [prefix, text, pad...] for a right-padded training
batch, [pad..., prefix, prompt] for a left-padded generation batch, so the prompt's last token stays last (greedy
output does not depend on the batch) and a row's positions (`cumsum(mask) - 1`, what Hugging Face's `generate`
derives from the mask) do not depend on its padding. Labels are -100 over the prefix and on the first text token
(which only the prefix could predict: the loss covers exactly the positions the collator counted), so the
summed-loss normalisation of the Trainer holds unchanged.

Rows without an image (has_image False: the collator's zero tokens) get their prefix masked out of attention, and
their text the positions it has without a prefix: they are the text-only LM. The prefix is still built for them,
so the projector is in every step's graph (DDP needs no search for unused parameters). A call without visual
tokens at all runs the LM on the input ids as they are.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..decoding import Decoding
from ..vision_language import IGNORE_INDEX, VisionLanguageModel
from ..vision import VisionEncoder


PROJECTORS = ("mlp2x_gelu", "linear")


@dataclass
class PrefixSettings:
    """The visual prefix's projector (the `prefix` method, and the visual path of `lora`)."""

    projector: str = "mlp2x_gelu"
    """LLaVA's `mm_projector_type` names: 'mlp2x_gelu' (LLaVA-1.5: Linear, GELU, Linear) or 'linear' (LLaVA-1)."""

    def __post_init__(self) -> None:
        if self.projector not in PROJECTORS:
            raise ValueError(f"model.prefix.projector must be one of {', '.join(PROJECTORS)}, got {self.projector!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PrefixProjector(nn.Module):
    """Encoder tokens (B x N_v x D) to LM input embeddings (B x N_v x C); no norm, so it learns the embeddings'
    scale, as LLaVA's projector does."""

    def __init__(self, kind: str, vision_width: int, hidden_size: int) -> None:
        super().__init__()
        if kind == "linear":
            self.layers = nn.Sequential(nn.Linear(vision_width, hidden_size))
        else:
            self.layers = nn.Sequential(nn.Linear(vision_width, hidden_size), nn.GELU(),
                                        nn.Linear(hidden_size, hidden_size))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens.to(self.layers[0].weight.dtype))


def insert_prefix(
    embeds: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor, has_image: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The LM's keyword arguments (`inputs_embeds`, `attention_mask`, `position_ids`, and `labels` if given) for
    text embeddings (B x T x C) with each row's `prefix` (B x N x C) placed just before its first real token."""
    batch, length = attention_mask.shape
    size = prefix.shape[1]
    start = (attention_mask.cumsum(1) == 0).sum(1, keepdim=True)  # each row's left padding
    slots = torch.arange(length + size, device=attention_mask.device)[None]
    in_prefix = (slots >= start) & (slots < start + size)
    # where each slot comes from in [text ; prefix] (T + N columns)
    source = torch.where(in_prefix, length + slots - start, torch.where(slots < start, slots, slots - size))

    def place(text: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([text, extra], dim=1)
        index = source.expand(batch, -1)
        return joined.gather(1, index if joined.dim() == 2 else index[..., None].expand(-1, -1, joined.shape[2]))

    mask = place(attention_mask, has_image[:, None].expand(batch, size).to(attention_mask.dtype))
    inputs = {
        "inputs_embeds": place(embeds, prefix.to(embeds.dtype)),
        "attention_mask": mask,
        "position_ids": (mask.long().cumsum(1) - 1).masked_fill(mask == 0, 0),
    }
    if labels is not None:
        labels = labels.scatter(1, start.clamp(max=length - 1), IGNORE_INDEX)
        inputs["labels"] = place(labels, labels.new_full((batch, size), IGNORE_INDEX))
    return inputs


class VisualPrefixModel(VisionLanguageModel):
    """A frozen causal LM reading projected visual tokens as a prefix of its input embeddings."""

    method = "prefix"
    settings_sections = ("prefix",)
    # The prefix is built for every row that passes visual tokens (masked for rows without an image), so the
    # projector gets a gradient in every step.
    ddp_find_unused_parameters = False

    def __init__(
        self, language_model: nn.Module, tokenizer: Any, prefix: PrefixSettings, vision: VisionEncoder | None = None,
        *, vision_identity: dict[str, Any] | None = None,
    ) -> None:
        language_model.requires_grad_(False)
        super().__init__(language_model, tokenizer, vision, vision_identity=vision_identity)
        self.prefix_settings = prefix
        self.projector = PrefixProjector(prefix.projector, self.vision_width,
                                         language_model.config.hidden_size).to(self.device)

    def adapter_config(self) -> dict[str, Any]:
        return self.prefix_settings.to_dict()

    def language_model_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor | None,
        has_image: torch.Tensor, labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The text as it is without visual tokens, else its embeddings with the projected prefix inserted."""
        if tokens is None:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            return inputs if labels is None else {**inputs, "labels": labels}
        embeds = self.language_model.get_input_embeddings()(input_ids)
        return insert_prefix(embeds, attention_mask, self.projector(tokens), has_image, labels)

    def text_logits(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Drop each row's prefix slots (just before its first real token, see `insert_prefix`)."""
        size = logits.shape[1] - attention_mask.shape[1]
        if size == 0:
            return logits
        start = (attention_mask.cumsum(1) == 0).sum(1, keepdim=True)
        positions = torch.arange(attention_mask.shape[1], device=logits.device)[None]
        index = torch.where(positions >= start, positions + size, positions)
        return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[2]))

    def forward_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
        tokens: torch.Tensor | None, has_image: torch.Tensor, loss_kwargs: dict[str, Any],
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = self.language_model_inputs(input_ids, attention_mask, tokens, has_image, labels)
        return self.language_model(**inputs, **loss_kwargs)

    def generate_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor | None,
        has_image: torch.Tensor, decoding: Decoding,
    ) -> torch.Tensor:
        inputs = self.language_model_inputs(input_ids, attention_mask, tokens, has_image)
        output = self.language_model.generate(
            **inputs, **decoding.generate_kwargs(self.pad_token_id(), self.tokenizer.eos_token_id)
        )
        # from embeddings alone, generate returns the new tokens only; from ids, the prompt and the new tokens
        return output if "inputs_embeds" in inputs else output[:, input_ids.shape[1]:]
