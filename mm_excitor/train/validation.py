"""Validation loss: the label-token-weighted mean over the whole validation set (or its first batches), whatever
the number of ranks."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .batches import Batch
from .distributed import DistInfo, all_reduce


def validation_loss(
    model: nn.Module,
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], Batch],
    *,
    batch_size: int,
    max_batches: int | None,
    num_workers: int,
    dist: DistInfo,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> float:
    """Batch j goes to rank j % world_size; every rank runs the same number of forwards (padding with weight-0
    repeats) because FSDP forwards are collectives. Each forward returns its summed token loss
    (`num_items_in_batch=1`), so the mean is over label tokens, not over batches."""
    indices = list(range(len(dataset)))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if max_batches is not None:
        batches = batches[:max_batches]
    mine = batches[dist.rank :: dist.world_size]
    per_rank = -(-len(batches) // dist.world_size)
    weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
    mine = mine + [batches[0]] * (per_rank - len(mine))
    loader = DataLoader(dataset, batch_sampler=mine, collate_fn=collate_fn, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    totals = torch.zeros(2, dtype=torch.float64, device=dist.device)
    with torch.no_grad():
        for weight, batch in zip(weights, loader):
            with autocast():
                loss_sum = model(**batch.to(dist.device).inputs, num_items_in_batch=1.0).loss.double()
            totals += weight * torch.stack([loss_sum, torch.tensor(float(batch.num_label_tokens), device=dist.device,
                                                                   dtype=torch.float64)])
    loss_sum, count = all_reduce(totals).tolist()
    return loss_sum / count if count else float("nan")
