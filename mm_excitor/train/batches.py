"""An endless stream of micro-batches over epochs that can stop and restart at any micro-batch boundary.

The position is (epoch, the sampler's state_dict() when that epoch's iterator started, indices consumed since).
Resuming loads that sampler state and skips the consumed indices (indices only: no item is loaded or decoded).
This relies on nothing but the sampler protocol (`set_epoch`, `state_dict`, `load_state_dict`, `__iter__`,
`__len__`), and stays exact with DataLoader workers, which pull indices from the sampler ahead of training.
"""
from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset


@dataclass
class Batch:
    """What a collate function hands the trainer: the model's keyword arguments and the counts the loop needs.

    The trainer never looks inside `inputs` (labels included): the collator that built them counts the positions
    the loss covers (`num_label_tokens`, after the causal shift) and the non-padding tokens (`num_tokens`).
    A batch whose items were all skipped (unreadable images) has empty `inputs` and is counted, not trained on.
    """

    inputs: dict[str, torch.Tensor]
    num_items: int
    num_label_tokens: int = 0
    num_tokens: int = 0
    meta: list[Any] = field(default_factory=list)
    """Per-item information for evaluation (ids, references); never a model input."""
    indices: list[int] = field(default_factory=list)
    """The dataset indices the sampler gave this batch (set by MicroBatches; named when a step is skipped)."""
    stats: dict[str, int] = field(default_factory=dict)
    """This batch's data counts (truncations, skipped items), summed into summary.json by the trainer."""

    def to(self, device: torch.device | str) -> Batch:
        return replace(self, inputs={k: v.to(device, non_blocking=True) for k, v in self.inputs.items()})

    def pin_memory(self) -> Batch:
        """DataLoader(pin_memory=True) calls this on custom batch types."""
        return replace(self, inputs={k: v.pin_memory() for k, v in self.inputs.items()})


class ResumableSamplerProtocol(Protocol):
    """What the trainer needs from a sampler (data/sampler.py's ResumableSampler implements it).

    `set_epoch(e)` starts epoch e from its beginning on the next `__iter__`; after `load_state_dict(s)`, `__iter__`
    yields what it would have yielded when `s = state_dict()` was taken. Under DDP each rank's sampler yields its own
    shard, and all ranks' shards have the same length.
    """

    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def __iter__(self) -> Iterator[int]: ...
    def __len__(self) -> int: ...


class _SkippingBatches:
    """Index batches from `sampler`, after skipping the first `skip` indices; records each batch's indices."""

    def __init__(self, sampler: ResumableSamplerProtocol, batch_size: int, drop_last: bool, skip: int,
                 taken: deque) -> None:
        self.sampler, self.batch_size, self.drop_last, self.skip = sampler, batch_size, drop_last, skip
        self.taken = taken

    def __iter__(self) -> Iterator[list[int]]:
        indices = iter(self.sampler)
        for _ in range(self.skip):
            if next(indices, None) is None:
                return
        batch: list[int] = []
        for index in indices:
            batch.append(index)
            if len(batch) == self.batch_size:
                self.taken.append(batch)
                yield batch
                batch = []
        if batch and not self.drop_last:
            self.taken.append(batch)
            yield batch

    def __len__(self) -> int:
        remaining = max(0, len(self.sampler) - self.skip)
        return remaining // self.batch_size if self.drop_last else -(-remaining // self.batch_size)


def _worker_ignores_signals(_worker_id: int) -> None:
    """Workers leave SIGINT/SIGTERM to the main process, which finishes its step and saves before stopping.

    Ctrl-C and schedulers signal the whole process group; a worker that died on the signal would make the step the
    main process is finishing fail. Such workers do not die when told to at interpreter exit either, so the main
    process shuts them down itself whenever iteration ends (see MicroBatches.__iter__).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def shutdown_workers(iterator: Any) -> None:
    """Stop a DataLoader iterator's worker processes now (on an error, its owner may never be collected)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class MicroBatches:
    def __init__(
        self,
        dataset: Dataset,
        sampler: ResumableSamplerProtocol,
        collate_fn: Callable[[list[Any]], Any],
        batch_size: int,
        *,
        drop_last: bool,
        num_workers: int,
        seed: int,
        rank: int,
        pin_memory: bool = False,
    ) -> None:
        self.dataset, self.sampler, self.collate_fn = dataset, sampler, collate_fn
        self.batch_size, self.drop_last, self.num_workers = batch_size, drop_last, num_workers
        self.seed, self.rank, self.pin_memory = seed, rank, pin_memory
        self.epoch = 0
        self.consumed = 0
        self.sampler_state: dict[str, Any] | None = None
        if self.per_epoch() < 1:
            raise ValueError(
                f"the training sampler yields {len(sampler)} items per epoch on this rank, fewer than one "
                f"micro-batch of {batch_size}"
            )

    def per_epoch(self) -> int:
        """Micro-batches per epoch on this rank."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def position(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "sampler_state": self.sampler_state}

    def seek(self, epoch: int, consumed: int, sampler_state: dict[str, Any] | None) -> None:
        self.epoch, self.consumed, self.sampler_state = epoch, consumed, sampler_state

    def __iter__(self) -> Iterator[Batch]:
        """Batches, forever; `position()` after a batch counts that batch's indices as consumed."""
        while True:
            self.sampler.set_epoch(self.epoch)
            if self.sampler_state is None:
                self.sampler_state = self.sampler.state_dict()
                self.consumed = 0
            else:
                self.sampler.load_state_dict(self.sampler_state)
            taken: deque[list[int]] = deque()
            # A private generator: creating the loader's iterator must not draw from the global torch RNG, or a
            # resumed run (which creates it mid-epoch) would shift every later random number.
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1_009 + self.rank)
            loader = DataLoader(
                self.dataset,
                batch_sampler=_SkippingBatches(self.sampler, self.batch_size, self.drop_last, self.consumed, taken),
                collate_fn=self.collate_fn,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                generator=generator,
                worker_init_fn=_worker_ignores_signals if self.num_workers else None,
            )
            iterator = iter(loader)
            try:
                for batch in iterator:
                    batch.indices = taken.popleft()
                    self.consumed += len(batch.indices)
                    yield batch
            finally:
                shutdown_workers(iterator)
            self.epoch += 1
            self.sampler_state = None
