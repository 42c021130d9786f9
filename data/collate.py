"""The batch collator of docs/interfaces.md: tokenise, pad, stack images or visual tokens, count truncation.

Training batches pad on the right (labels -100 on prompt and padding); generation batches (prompt only) pad on
the **left**, so the last prompt token sits at the same place for every row and greedy output does not depend on
the batch size. ``None`` items (images skipped under ``on_bad_image="skip"``) are dropped and counted.

Counts travel inside each batch (``batch["stats"]``) because a collator running in DataLoader worker processes
cannot update a counter in the training process; ``Collator.totals`` is exact only with ``num_workers=0``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from data.text import IGNORE_INDEX, encode_example, encode_prompt, pad_id

log = logging.getLogger(__name__)


@dataclass
class CollateStats:
    """Counts of one batch, or running totals (``add``); plain ints so they log and checkpoint as they are."""

    examples: int = 0
    truncated: int = 0
    prompt_tokens_cut: int = 0
    target_tokens_cut: int = 0
    skipped: int = 0

    def add(self, other: "CollateStats | dict") -> None:
        other = other if isinstance(other, dict) else other.as_dict()
        for k, v in other.items():
            setattr(self, k, getattr(self, k) + int(v))

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Collator:
    """``collate_fn`` for a DataLoader. ``generate=True`` builds left-padded prompt-only batches (no labels).

    The batch holds ``input_ids``, ``attention_mask``, ``labels`` (training only), ``images`` or
    ``visual_tokens`` (zeros where ``has_image`` is False), ``has_image``, ``meta`` and ``stats`` (a dict of
    CollateStats counts for this batch: add them up in the training loop to report truncation and skips).
    A batch whose items were all skipped has only ``meta`` (empty) and ``stats``: count it, then skip it.
    """

    def __init__(self, tokenizer: Any, max_length: int = 512, *, generate: bool = False,
                 pad_to_multiple_of: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.generate = generate
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_id = pad_id(tokenizer)
        self.totals = CollateStats()

    def __call__(self, items: Sequence[dict | None]) -> dict:
        stats = CollateStats(skipped=sum(it is None for it in items))
        items = [it for it in items if it is not None]
        stats.examples = len(items)
        if stats.skipped:
            log.warning("batch: %d item(s) dropped (unreadable images, see earlier warnings)", stats.skipped)
        if not items:
            self.totals.add(stats)
            return {"meta": [], "stats": stats.as_dict()}
        if self.generate:
            encoded = [encode_prompt(self.tokenizer, it["prompt"], self.max_length) for it in items]
        else:
            for it in items:
                if "target" not in it:
                    raise KeyError(f"training item without 'target' (meta {it.get('meta')}); use generate=True")
            encoded = [encode_example(self.tokenizer, it["prompt"], it["target"], self.max_length) for it in items]
        for e in encoded:
            stats.truncated += e.truncated
            stats.prompt_tokens_cut += e.prompt_tokens_cut
            stats.target_tokens_cut += e.target_tokens_cut
        self.totals.add(stats)
        batch = self._pad(encoded)
        batch.update(stack_visual(items))
        batch["meta"] = [it.get("meta", {}) for it in items]
        batch["stats"] = stats.as_dict()
        return batch

    def _pad(self, encoded: list) -> dict[str, torch.Tensor]:
        length = max(len(e.input_ids) for e in encoded)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = -(-length // m) * m
        n = len(encoded)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, length), dtype=torch.long)
        labels = None if self.generate else torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(encoded):
            k = len(e.input_ids)
            cols = slice(length - k, length) if self.generate else slice(0, k)
            input_ids[i, cols] = torch.tensor(e.input_ids, dtype=torch.long)
            attention[i, cols] = 1
            if labels is not None:
                labels[i, cols] = torch.tensor(e.labels, dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention}
        if labels is not None:
            out["labels"] = labels
        return out


def stack_visual(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """``images`` (B×3×H×W) or ``visual_tokens`` (B×N×D) plus ``has_image`` (B bool); rows without an image are
    zeros. A batch with no image at all has only ``has_image``."""
    has_image = torch.tensor([bool(it.get("has_image", False)) for it in items], dtype=torch.bool)
    out: dict[str, torch.Tensor] = {"has_image": has_image}
    keys = [k for k in ("image", "visual_tokens") if any(k in it for it in items)]
    if len(keys) > 1:
        raise ValueError("a batch mixes 'image' and 'visual_tokens' items")
    for it, flag in zip(items, has_image.tolist()):
        if flag and not keys or flag and keys[0] not in it:
            raise ValueError(f"item has has_image=True but no image or visual tokens (meta {it.get('meta')})")
    if not keys:
        return out
    key = keys[0]
    ref = next(it[key] for it in items if key in it)
    rows = []
    for it, flag in zip(items, has_image.tolist()):
        t = it.get(key)
        if not flag or t is None:
            t = torch.zeros_like(ref)
        elif t.shape != ref.shape:
            raise ValueError(f"{key} shapes differ in a batch: {tuple(t.shape)} vs {tuple(ref.shape)} "
                             f"(meta {it.get('meta')})")
        rows.append(t)
    out["images" if key == "image" else "visual_tokens"] = torch.stack(rows)
    return out


def collate(items: Sequence[dict | None], tokenizer: Any, max_length: int = 512, *,
            generate: bool = False) -> dict:
    """One-off functional form of ``Collator``."""
    return Collator(tokenizer, max_length, generate=generate)(items)
