"""A deterministic, rank-sharded sampler whose epoch order can be restored exactly.

Semantics follow ``torch.utils.data.DistributedSampler`` (permutation from ``seed + epoch``; padding by repeating
the first indices, or dropping the tail with ``drop_last``; rank r takes every world_size-th index from r), plus
a plain-type ``state_dict`` that a later process loads to get the same epoch's order. Resuming mid-epoch is the
training loop's job (mm_excitor.train.batches): it records the state when the epoch starts and skips the indices
it consumed, which stays exact when DataLoader workers prefetch ahead of the loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Per-epoch deterministic order, sharded across ranks, resumable mid-epoch from a plain-type state."""

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        if num_items < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler arguments: num_items={num_items} rank={rank} world_size={world_size}")
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        if drop_last:
            self.num_samples = num_items // world_size
        else:
            self.num_samples = math.ceil(num_items / world_size)
        self.total_size = self.num_samples * world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next ``__iter__`` yields from its beginning."""
        self.epoch = epoch

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full index list for an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        if self.drop_last:
            order = order[: self.total_size]
        elif order:
            pad = self.total_size - len(order)
            order += (order * math.ceil(pad / len(order)))[:pad]
        return order[self.rank: self.total_size: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        """Items per rank in a full epoch (the DistributedSampler meaning)."""
        return self.num_samples

    def state_dict(self) -> dict:
        """Plain-type state: the epoch, and what must match for its order to be the same."""
        return {"epoch": self.epoch, "seed": self.seed, "num_items": self.num_items, "world_size": self.world_size,
                "rank": self.rank, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Restore the epoch; refuses a state from a different data size, seed or sharding, whose order differs."""
        for key in ("seed", "num_items", "world_size", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has "
                                 f"{getattr(self, key)!r}: cannot resume exactly")
        self.epoch = int(state["epoch"])
