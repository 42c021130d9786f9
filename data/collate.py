"""The collator of docs/interfaces.md: one per task, for training batches and generation batches alike.

`collator(items)` builds a training batch: prompt + target tokens padded on the right, labels IGNORE_INDEX on the
prompt and the padding. `collator.prompts(items)` builds a generation batch: the same prompt tokens (the same
function, `data.text.encode_prompt`, with the same truncation policy) padded on the **left**, so the last prompt
token sits at the same place for every row and greedy output does not depend on the batch size. Both return a
`mm_excitor.train.Batch` whose `inputs` are the model's keyword arguments.

Images: `images` (B x 3 x H x W) or `visual_tokens` (B x N x D) with `has_image` (B, bool); a row without an image
gets zeros (the dataset's, or `blank`, the zero image/tokens the task gives for items that carry none, e.g.
text-only instruction data). `None` items (images skipped under `on_bad_image="skip"`) are dropped and counted.
Counts travel inside each batch (`batch.stats`) because a collator running in DataLoader worker processes cannot
update a counter in the training process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from data.chat import encode_chat_prompt, encode_conversation
from data.text import IGNORE_INDEX, Encoded, encode_example, encode_prompt, pad_id
from mm_excitor.train.batches import Batch

log = logging.getLogger(__name__)
VISUAL_KEYS = {"image": "images", "visual_tokens": "visual_tokens"}
"""Item key -> batch key."""


@dataclass
class CollateStats:
    """Counts of one batch, as plain ints so they log and checkpoint as they are."""

    examples: int = 0
    truncated: int = 0
    prompt_tokens_cut: int = 0
    target_tokens_cut: int = 0
    skipped: int = 0

    def count(self, encoded: Encoded | None) -> None:
        """Add one item's truncation counts (None: an item its collator could not encode, see InstructStats)."""
        if encoded is None:
            raise ValueError("this collator encodes every item")
        self.truncated += encoded.truncated
        self.prompt_tokens_cut += encoded.prompt_tokens_cut
        self.target_tokens_cut += encoded.target_tokens_cut


class Collator:
    """`collate_fn` of a task: `collator(items)` for training, `collator.prompts(items)` for generation."""

    stats_class: type[CollateStats] = CollateStats

    def __init__(self, tokenizer: Any, max_length: int = 512, *, blank: Mapping[str, torch.Tensor] | None = None,
                 pad_to_multiple_of: int | None = None) -> None:
        if blank is not None and (len(blank) != 1 or next(iter(blank)) not in VISUAL_KEYS):
            raise ValueError(f"blank must map one of {sorted(VISUAL_KEYS)} to a zero tensor, got {sorted(blank)}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.blank = dict(blank) if blank is not None else None
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_id = pad_id(tokenizer)

    def __call__(self, items: Sequence[dict | None]) -> Batch:
        """A training batch (right-padded, with labels)."""
        def encode(item: dict) -> Encoded:
            if "target" not in item:
                raise ValueError(f"training item without 'target' (meta {item.get('meta')}); use prompts() to generate")
            return encode_example(self.tokenizer, item["prompt"], item["target"], self.max_length)

        return self._batch(items, encode, left_pad=False)

    def prompts(self, items: Sequence[dict | None]) -> Batch:
        """A generation batch (left-padded prompts, no labels)."""
        return self._batch(items, lambda item: encode_prompt(self.tokenizer, item["prompt"], self.max_length),
                           left_pad=True)

    def _batch(self, items: Sequence[dict | None], encode: Any, left_pad: bool) -> Batch:
        stats = self.stats_class(skipped=sum(it is None for it in items))
        if stats.skipped:
            log.warning("batch: %d item(s) dropped (unreadable images, see earlier warnings)", stats.skipped)
        kept, encoded = [], []
        for item in items:
            if item is None:
                continue
            e = encode(item)
            stats.count(e)
            if e is not None:
                kept.append(item)
                encoded.append(e)
        stats.examples = len(kept)
        if not kept:
            return Batch(inputs={}, num_items=0, stats=asdict(stats))
        inputs = self._pad(encoded, left_pad)
        inputs.update(stack_visual(kept, self.blank))
        labels = inputs.get("labels")
        return Batch(
            inputs=inputs,
            num_items=len(kept),
            # the positions a causal LM loss covers: labels shifted by one, ignored ones left out
            num_label_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()) if labels is not None else 0,
            num_tokens=int(inputs["attention_mask"].sum()),
            meta=[it.get("meta", {}) for it in kept],
            stats=asdict(stats),
        )

    def _pad(self, encoded: list[Encoded], left_pad: bool) -> dict[str, torch.Tensor]:
        length = max(len(e.input_ids) for e in encoded)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(encoded)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, length), dtype=torch.long)
        with_labels = encoded[0].labels is not None
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long) if with_labels else None
        for i, e in enumerate(encoded):
            k = len(e.input_ids)
            cols = slice(length - k, length) if left_pad else slice(0, k)
            input_ids[i, cols] = torch.tensor(e.input_ids, dtype=torch.long)
            attention[i, cols] = 1
            if labels is not None:
                labels[i, cols] = torch.tensor(e.labels, dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention}
        if labels is not None:
            out["labels"] = labels
        return out


def stack_visual(items: Sequence[dict], blank: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """`images` (B x 3 x H x W) or `visual_tokens` (B x N x D) plus `has_image` (B bool); rows without an image are
    zeros (from `blank` when the item carries no tensor). A batch with neither images nor a blank has only
    `has_image`."""
    has_image = torch.tensor([bool(it.get("has_image", False)) for it in items], dtype=torch.bool)
    out: dict[str, torch.Tensor] = {"has_image": has_image}
    keys = {k for k in VISUAL_KEYS if any(k in it for it in items)} | set(blank or {})
    if len(keys) > 1:
        raise ValueError(f"a batch mixes {' and '.join(sorted(keys))} items")
    for it, flag in zip(items, has_image.tolist()):
        if flag and (not keys or next(iter(keys)) not in it):
            raise ValueError(f"item has has_image=True but no image or visual tokens (meta {it.get('meta')})")
    if not keys:
        return out
    key = next(iter(keys))
    ref = blank[key] if blank else next(it[key] for it in items if key in it)
    rows = []
    for it, flag in zip(items, has_image.tolist()):
        tensor = it.get(key) if flag else None
        if tensor is None:
            tensor = torch.zeros_like(ref)
        elif tensor.shape != ref.shape:
            raise ValueError(f"{key} shapes differ in a batch: {tuple(tensor.shape)} vs {tuple(ref.shape)} "
                             f"(meta {it.get('meta')})")
        rows.append(tensor)
    out[VISUAL_KEYS[key]] = torch.stack(rows)
    return out


@dataclass
class ChatStats(CollateStats):
    """CollateStats plus the conversation counts: trailing assistant turns dropped to fit `max_length`, and
    conversations left out because their first answer does not fit (also counted in `skipped`)."""

    turns_dropped: int = 0
    too_long: int = 0

    def count(self, encoded: Encoded | None) -> None:
        if encoded is None:
            self.too_long += 1
            self.skipped += 1
            return
        super().count(encoded)
        self.turns_dropped += getattr(encoded, "turns_dropped", 0)


class ChatCollator(Collator):
    """The collator of conversation items (`messages`, data.chat): rendered with the tokenizer's chat template
    (`template` replaces it), labels on every assistant turn; generation prompts are the conversation up to its
    last user turn. Items with `prompt`/`target` instead (DELIA's mix) are encoded as by Collator."""

    stats_class = ChatStats

    def __init__(self, tokenizer: Any, max_length: int = 512, *, blank: Mapping[str, torch.Tensor] | None = None,
                 template: str | None = None, pad_to_multiple_of: int | None = None) -> None:
        super().__init__(tokenizer, max_length, blank=blank, pad_to_multiple_of=pad_to_multiple_of)
        self.template = template

    def __call__(self, items: Sequence[dict | None]) -> Batch:
        def encode(item: dict) -> Encoded | None:
            if "messages" not in item:
                return encode_example(self.tokenizer, item["prompt"], item["target"], self.max_length)
            encoded = encode_conversation(self.tokenizer, item["messages"], self.max_length, self.template)
            if encoded is None:
                log.warning("conversation %s left out: its first answer does not fit max_length=%d",
                            item.get("meta"), self.max_length)
            return encoded

        return self._batch(items, encode, left_pad=False)

    def prompts(self, items: Sequence[dict | None]) -> Batch:
        def encode(item: dict) -> Encoded:
            if "messages" not in item:
                return encode_prompt(self.tokenizer, item["prompt"], self.max_length)
            return encode_chat_prompt(self.tokenizer, item["messages"], self.max_length, self.template)

        return self._batch(items, encode, left_pad=True)
