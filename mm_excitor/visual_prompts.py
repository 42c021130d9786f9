"""The per-sample visual prompts of one call, passed explicitly to the adapted layers.

A method that reads images as prompts of its adapted layers (the Excitor, LLaMA-Adapter) builds one `VisualPrompts`
per forward or generate call from the projected encoder tokens and gives it to the frozen language model as the
keyword argument `visual_prompts`. Transformers hands the keyword arguments of a causal LM's forward to every
attention call, so the prompts reach each adapted layer as an argument of that call: nothing outlives the call, and
activation checkpointing, which replays a layer with the same arguments, sees the same prompts.
"""
from __future__ import annotations

import inspect
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

KEYWORD = "visual_prompts"
"""The language model's keyword argument that carries a `VisualPrompts`."""


@dataclass(frozen=True)
class VisualPrompts:
    tokens: torch.Tensor
    """B x N x W projected visual tokens: the prompts an adapted layer matches its queries against."""
    has_image: torch.Tensor
    """(B,) bool: rows without an image see the learnable prompts alone."""
    value_tokens: torch.Tensor | None = None
    """B x N x W tokens that serve as the values, where a method projects them separately (the Excitor's
    `separate_kv`); None: `tokens` serve as both."""

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3:
            raise ValueError(f"visual prompts must be B x N x W, got {tuple(self.tokens.shape)}")
        if tuple(self.has_image.shape) != (self.tokens.shape[0],):
            raise ValueError(f"has_image has shape {tuple(self.has_image.shape)}, expected ({self.tokens.shape[0]},): "
                             "one flag per set of visual tokens")
        if self.value_tokens is not None and self.value_tokens.shape != self.tokens.shape:
            raise ValueError(f"value tokens {tuple(self.value_tokens.shape)} do not match the key tokens "
                             f"{tuple(self.tokens.shape)}")

    @property
    def values(self) -> torch.Tensor:
        return self.tokens if self.value_tokens is None else self.value_tokens

    def check_rows(self, rows: int) -> None:
        """One prompt set per row, never broadcast: a caller that expands its batch (beam search) expands the
        prompts the same way (`repeat_interleave`)."""
        if self.tokens.shape[0] != rows:
            raise ValueError(f"a batch of {rows} rows was given {self.tokens.shape[0]} visual prompt sets: pass one "
                             "image (or visual tokens) per row")

    def repeat_interleave(self, repeats: int) -> VisualPrompts:
        """Each row's prompts `repeats` times in a row, as `generate` expands a row to its beams."""
        values = None if self.value_tokens is None else self.value_tokens.repeat_interleave(repeats, dim=0)
        return VisualPrompts(self.tokens.repeat_interleave(repeats, dim=0),
                             self.has_image.repeat_interleave(repeats, dim=0), values)


def accept_in_generate(model: nn.Module) -> None:
    """Let `model.generate(..., visual_prompts=...)` hand the prompts to every forward call of the generation.

    Transformers forwards generate's extra keyword arguments to the model, but first refuses any name that the
    model's `prepare_inputs_for_generation` does not list; this gives the model's own method a signature that lists
    `visual_prompts` (bound to the instance, so that a copy of the model stays bound to the copy)."""
    if KEYWORD not in inspect.signature(model.prepare_inputs_for_generation).parameters:
        model.prepare_inputs_for_generation = types.MethodType(_prepare_inputs_for_generation, model)


def _prepare_inputs_for_generation(model: nn.Module, *args: Any, visual_prompts: VisualPrompts | None = None,
                                   **kwargs: Any) -> dict[str, Any]:
    inputs = type(model).prepare_inputs_for_generation(model, *args, **kwargs)
    if visual_prompts is not None:
        inputs[KEYWORD] = visual_prompts
    return inputs
