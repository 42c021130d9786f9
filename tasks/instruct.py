"""General instruction tuning: Alpaca, chat-messages, ShareGPT and LLaVA files (data.instruct), rendered with the
model's own chat template (data.chat), the loss on every assistant turn; text-only and image conversations mix in
one dataset and one batch, images reaching each method as its visual input.

Evaluation: the held-out answer NLL per token (`answer_nll`) and greedy answers to the held-out prompts (scored by
eval.instruct), with the images and without them when any held-out conversation has one (the image-blind control).
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.collate import ChatCollator
from data.datasets import ImageRef, VisualDataset
from data.instruct import Conversation, read_conversations
from data.text import IGNORE_INDEX
from eval.instruct import score_answers_file, write_answers
from mm_excitor.decoding import Decoding
from tasks.base import (
    COMMON_FREE_KEYS, DataConfig, RunConfig, Task, TaskData, VisualSource, blank_of, data_fingerprint,
)

SPLITS = ("train", "val", "eval")


@dataclass
class InstructDataConfig(DataConfig):
    """Instruction data files (data.instruct's formats) and how they split."""

    train_files: list[str] = field(default_factory=list)
    """Alpaca / chat-messages / ShareGPT / LLaVA files (JSON list or JSON lines), read in order."""
    val_files: list[str] = field(default_factory=list)
    """Validation conversations; empty: `val_size` conversations held out of train_files."""
    eval_files: list[str] = field(default_factory=list)
    """Evaluation conversations; empty: `eval_size` conversations held out of train_files."""
    format: str = "auto"
    """auto (detected per file), alpaca, messages, sharegpt or llava."""
    image_root: str = ""
    """Where LLaVA records' `image` paths are relative to."""
    val_size: int = 0
    eval_size: int = 0
    split_seed: int = 0
    """Which conversations of train_files are held out (a seeded draw, disjoint from the training ones)."""
    eval_split: str = "eval"
    """The split evaluation answers: eval, val or train."""
    chat_template: str | None = None
    """A Jinja chat template file replacing the tokenizer's own (a base model without one)."""
    max_length: int = 512
    on_bad_record: str = "error"
    """'error': a bad record stops the run naming its file and index; 'skip': dropped, counted and logged."""


@dataclass
class InstructRunConfig(RunConfig):
    data: InstructDataConfig = field(default_factory=InstructDataConfig)
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=64))


class InstructDataset(VisualDataset):
    """Conversations (data.instruct): one item per conversation, `messages` for data.chat, the image when it has
    one (`has_image` False for a text-only record). `prompt` is the last user turn, `meta["reference"]` its answer:
    what a generation record and its scorer show."""

    set_name = "instruction set"

    def image(self, conversation: Conversation) -> ImageRef:
        return conversation.source, conversation.image, conversation.image_key

    def item(self, conversation: Conversation) -> dict[str, Any]:
        messages = [dict(m) for m in conversation.messages]
        return {"messages": messages, "prompt": messages[-2]["content"], "has_image": conversation.image is not None,
                "meta": {"id": conversation.id, "image_key": conversation.image_key,
                         "reference": messages[-1]["content"]}}


@dataclass
class InstructData(TaskData):
    references: dict[str, str] | None = None
    """The held-out answer (the last assistant turn) per conversation id of the eval split."""


def split_conversations(config: InstructDataConfig) -> dict[str, list[Conversation]]:
    """train / val / eval conversations: from their own files, or held out of train_files by a seeded draw."""
    def read(paths: list[str]) -> list[Conversation]:
        return read_conversations(paths, config.format, config.image_root, config.on_bad_record)[0]

    if not config.train_files and not config.eval_files:
        raise ValueError("data.train_files names no instruction data file")
    pool = read(config.train_files) if config.train_files else []
    order = list(range(len(pool)))
    random.Random(config.split_seed).shuffle(order)
    held: dict[str, list[int]] = {}
    for name, files, size in (("eval", config.eval_files, config.eval_size), ("val", config.val_files,
                                                                             config.val_size)):
        if not files:
            held[name], order = sorted(order[:size]), order[size:]
    if held and sum(map(len, held.values())) >= len(pool) > 0:
        raise ValueError(f"data.val_size + data.eval_size hold out all {len(pool)} conversations of "
                         "data.train_files: none is left to train on")
    taken = {i for indices in held.values() for i in indices}
    splits = {"train": [c for i, c in enumerate(pool) if i not in taken]}
    for name, files in (("val", config.val_files), ("eval", config.eval_files)):
        splits[name] = read(files) if files else [pool[i] for i in held[name]]
    ids = [c.id for c in splits[config.eval_split]] if config.eval_split in splits else []
    if len(set(ids)) != len(ids):
        raise ValueError(f"the {config.eval_split} conversations repeat ids; every evaluation answer needs its own")
    return splits


def answer_nll(model: Any, dataset: Any, collator: Any, batch_size: int) -> dict[str, float]:
    """{"answer_nll": mean NLL per assistant token, "answer_tokens": their count, "conversations": how many were
    scored} over `dataset` (conversations whose first answer does not fit are left out, as in training)."""
    total, tokens, rows = 0.0, 0, 0
    items = [item for item in (dataset[i] for i in range(len(dataset))) if item is not None]
    for start in range(0, len(items), batch_size):
        batch = collator(items[start:start + batch_size])
        if batch.num_items == 0:
            continue
        batch = batch.to(model.device)
        total -= float(model.label_log_likelihoods(**batch.inputs).sum())
        tokens += int((batch.inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        rows += batch.num_items
    if tokens == 0:
        raise ValueError("no held-out answer token to score (every conversation too long, or none)")
    return {"answer_nll": total / tokens, "answer_tokens": tokens, "conversations": rows}



class InstructTask(Task):
    name = "instruct"
    config_class = InstructRunConfig
    id_key = "id"
    output_name = "answers.jsonl"
    resume_free_keys = (*COMMON_FREE_KEYS, "data.val_files", "data.eval_files", "data.image_root")

    def build_data(self, config: InstructRunConfig, visual: VisualSource,
                   splits: Iterable[str] = SPLITS) -> InstructData:
        data, splits = config.data, set(splits)
        if data.eval_split not in SPLITS:
            raise ValueError(f"data.eval_split must be one of {', '.join(SPLITS)}, got {data.eval_split!r}")
        conversations = split_conversations(data)
        def dataset(split: str, wanted_as: str) -> InstructDataset | None:
            if wanted_as not in splits or not conversations[split]:
                return None
            return InstructDataset(conversations[split], **visual.dataset_options(data.on_bad_image))

        train, val, test = dataset("train", "train"), dataset("val", "val"), dataset(data.eval_split, "eval")
        identity = (data_fingerprint([c.id, c.messages, c.image_key] for c in train.records)
                    if train is not None else {})
        references = {c.id: c.messages[-1]["content"] for c in test.records} if test is not None else None
        return InstructData(train, val, test, blank=blank_of(train, val, test), identity=identity,
                            references=references)

    def collator(self, tokenizer: Any, config: InstructRunConfig, data: TaskData) -> ChatCollator:
        template = Path(config.data.chat_template).read_text(encoding="utf-8") if config.data.chat_template else None
        return ChatCollator(tokenizer, config.data.max_length, blank=data.blank, template=template)

    def protocol(self, config: InstructRunConfig) -> str:
        return "held-out answer NLL per token; greedy answers, exact match after normalisation"

    def evaluate(
        self, model: Any, config: InstructRunConfig, data: InstructData, collator: ChatCollator, decoding: Decoding,
        out_dir: Path, *, adapter_fingerprint: str, rank: int = 0, world_size: int = 1, allow_subset: bool = False,
    ) -> dict[str, dict[str, float]] | None:
        """Task.evaluate's passes (with the images, and image-blind when a held-out conversation has an image),
        each scored by answer NLL and its greedy answers. This is where a capability probe's scores (what the
        base model could already do) join the table, as one more run next to these."""
        if any(c.image is not None for c in data.eval.records):
            return super().evaluate(model, config, data, collator, decoding, out_dir,
                                    adapter_fingerprint=adapter_fingerprint, rank=rank, world_size=world_size,
                                    allow_subset=allow_subset)
        metrics = self.evaluate_run(model, config, data, data.eval, collator, decoding, out_dir / "text",
                                    source={"adapter": adapter_fingerprint, "images": False}, rank=rank,
                                    world_size=world_size, allow_subset=allow_subset)
        return None if metrics is None else {"text": metrics}

    def evaluate_run(
        self, model: Any, config: InstructRunConfig, data: InstructData, dataset: Any, collator: ChatCollator,
        decoding: Decoding, out_dir: Path, *, source: dict[str, Any], rank: int, world_size: int, allow_subset: bool,
    ) -> dict[str, float] | None:
        """Generate the answers (sharded, resumable), then on the merging rank score them and add the answer NLL."""
        metrics = super().evaluate_run(model, config, data, dataset, collator, decoding, out_dir, source=source,
                                       rank=rank, world_size=world_size, allow_subset=allow_subset)
        if metrics is None:
            return None
        return {**answer_nll(model, dataset, collator, decoding.batch_size), **metrics}

    def write_outputs(self, records: list[dict], path: Path) -> None:
        write_answers(records, path)

    def score(self, outputs: Path, config: InstructRunConfig, data: InstructData, out_dir: Path, decoding: Decoding,
              allow_subset: bool = False) -> dict[str, float]:
        return score_answers_file(outputs, data.references, out_dir, allow_subset)
