"""DELIA's mix: R x |task| of the model's own answers to general instructions, trained next to the task data.

The self-sampled file (`python -m mm_excitor.delia sample`, read with `read_samples`) holds one answer per general
instruction. A run draws round(R x |task|) of them without replacement, seeded by `data.delia.seed`, turns each
into a text-only item through the one instruction template of `data.prompts` (no image: the model sees its
learnable prompts only, as for a text-only ScienceQA question) and puts them after the task items in one dataset;
the training sampler shuffles the whole set uniformly every epoch. The loss is the same answer-only loss as for
the task items. R = 0 is plain task tuning and needs no file.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from data.prompts import instruction_example
from mm_excitor.delia.sampling import read_samples


@dataclass
class DeliaMixConfig:
    """`data.delia` of every task's run config: which self-sampled answers join the training set, and how many."""

    samples: str | None = None
    """The sampled JSON lines (`python -m mm_excitor.delia sample --out ...`); not needed when ratio is 0."""
    ratio: float = 0.0
    """R: round(R x |task items|) samples join the task items (0: plain task tuning)."""
    seed: int = 0
    """Which samples are drawn (the training order is the sampler's, seeded by train.seed)."""

    def __post_init__(self) -> None:
        if not self.ratio >= 0:
            raise ValueError(f"data.delia.ratio must be >= 0, got {self.ratio}")


def delia_count(config: DeliaMixConfig, task_items: int) -> int:
    """round(R x |task|): the number of DELIA items a training set of `task_items` gets."""
    return round(config.ratio * task_items)


def delia_items(config: DeliaMixConfig, task_items: int) -> list[dict[str, Any]]:
    """The DELIA items for a task set of `task_items` items, drawn without replacement by `config.seed`."""
    count = delia_count(config, task_items)
    if count == 0:
        return []
    if not config.samples:
        raise ValueError(f"data.delia.ratio is {config.ratio} but data.delia.samples names no self-sampled file")
    samples = read_samples(config.samples)
    if len(samples) < count:
        raise ValueError(f"{config.samples}: {len(samples)} self-sampled records, but R x |task| = {config.ratio} x "
                         f"{task_items} = {count} are needed (sample a larger pool, or lower data.delia.ratio)")
    chosen = random.Random(config.seed).sample(range(len(samples)), count)
    return [delia_item(samples[index], index) for index in chosen]


def delia_item(record: dict[str, Any], index: int) -> dict[str, Any]:
    """A text-only training item from one self-sampled record (`index`: its line, the id if it has none)."""
    user, assistant = record["messages"]
    return instruction_item(user["content"], assistant["content"], {"delia_id": record.get("id", index)})


def instruction_item(query: str, answer: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A text-only item of a general instruction and its answer, through the one instruction template (what DELIA
    trains on, and what the ablation's retention measure scores)."""
    prompt, target = instruction_example(query, answer)
    return {"prompt": prompt, "target": target, "has_image": False, "meta": meta}


class MixedDataset(Dataset):
    """The task items once, then the DELIA items (text-only dicts, copied on access)."""

    def __init__(self, task: Dataset, delia: Sequence[dict[str, Any]]) -> None:
        self.task = task
        self.delia = list(delia)
        self.task_items = len(task)

    def __len__(self) -> int:
        return self.task_items + len(self.delia)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < self.task_items:
            return self.task[index]
        item = self.delia[index - self.task_items]
        return {**item, "meta": dict(item["meta"])}
