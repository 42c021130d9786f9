"""Tokenisation of (prompt, target) pairs: the loss covers the target tokens + EOS only.

The prompt and the target are encoded separately and concatenated, so the prompt tokens seen in training are
exactly those ``encode_prompt`` gives at generation time, and the label boundary is exact for any tokenizer.

Truncation policy (when prompt + target + EOS exceed ``max_length``):

1. The prompt loses tokens from the **left**, after its leading special tokens (BOS), because its end (options,
   ``Answer:``/``Caption:``) is what the answer follows. ``encode_prompt`` truncates the same way, so training
   and generation see the same prompt.
2. The prompt is not cut below ``min(len(prompt), max_length // 2)`` tokens; if the target still does not fit, it
   loses tokens from the **right** (and the EOS, since the answer is then unfinished). At least one target token
   always remains: a ``max_length`` too small for that is an error, never a silently dropped answer.

Every truncation is counted in the returned ``Encoded`` and summed per batch by ``data.collate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example; ``labels`` is None for generation prompts."""

    input_ids: list[int]
    labels: list[int] | None
    prompt_tokens_cut: int = 0
    target_tokens_cut: int = 0

    @property
    def truncated(self) -> bool:
        return self.prompt_tokens_cut > 0 or self.target_tokens_cut > 0


def encode_example(tokenizer: Any, prompt: str, target: str, max_length: int) -> Encoded:
    """input_ids = prompt ids (with the tokenizer's special prefix) + target ids + EOS; labels are -100 on the
    prompt. Truncation follows the module policy and is counted."""
    eos = _eos_id(tokenizer)
    prompt_ids = _ids(tokenizer, prompt, special=True)
    target_ids = _ids(tokenizer, target, special=False) + [eos]
    n_special = n_leading_special(tokenizer, prompt_ids)
    if max_length < n_special + 2:
        raise ValueError(f"max_length={max_length} leaves no room for a prompt token and a target token")
    prompt_cut = target_cut = 0
    if len(prompt_ids) + len(target_ids) > max_length:
        keep_prompt = min(len(prompt_ids), max(max_length // 2, n_special + 1))
        room_for_target = max_length - keep_prompt
        if len(target_ids) > room_for_target:
            target_cut = len(target_ids) - room_for_target
            target_ids = target_ids[:room_for_target]  # the EOS goes first: the answer is unfinished
        room_for_prompt = max_length - len(target_ids)
        prompt_ids, prompt_cut = cut_left(prompt_ids, room_for_prompt, n_special)
    labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
    return Encoded(prompt_ids + target_ids, labels, prompt_cut, target_cut)


def encode_prompt(tokenizer: Any, prompt: str, max_length: int) -> Encoded:
    """Prompt ids for generation, truncated from the left exactly as in ``encode_example``."""
    prompt_ids = _ids(tokenizer, prompt, special=True)
    n_special = n_leading_special(tokenizer, prompt_ids)
    if max_length < n_special + 1:
        raise ValueError(f"max_length={max_length} leaves no room for a prompt token")
    ids, cut = cut_left(prompt_ids, max_length, n_special)
    return Encoded(ids, None, cut, 0)


def pad_id(tokenizer: Any) -> int:
    """The padding id: the tokenizer's pad token, else its EOS (padding is masked out either way)."""
    pid = getattr(tokenizer, "pad_token_id", None)
    return _eos_id(tokenizer) if pid is None else int(pid)


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token; targets must end with one")
    return int(eos)


def n_leading_special(tokenizer: Any, ids: list[int]) -> int:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    n = 0
    while n < len(ids) and ids[n] in special:
        n += 1
    return n


def cut_left(ids: list[int], length: int, n_keep_front: int) -> tuple[list[int], int]:
    """Drop tokens after the first ``n_keep_front`` until ``ids`` fits ``length``; returns (ids, n dropped)."""
    excess = len(ids) - length
    if excess <= 0:
        return ids, 0
    return ids[:n_keep_front] + ids[n_keep_front + excess:], excess
