"""A deterministic, rank-sharded sampler that resumes mid-epoch exactly.

Semantics follow ``torch.utils.data.DistributedSampler`` (permutation from ``seed + epoch``; padding by repeating
the first indices, or dropping the tail with ``drop_last``; rank r takes every world_size-th index from r), plus a
position inside the epoch that ``state_dict``/``load_state_dict`` carry, so the items after a resume are exactly
those an uninterrupted run would have seen.

Resuming needs the number of items the training loop has *consumed*, which is not what the sampler has yielded
when a DataLoader prefetches: either take ``state_dict()`` when the epoch's iterator starts and skip the consumed
indices on resume (what mm_excitor's trainer does), or pass ``state_dict(consumed=step_in_epoch * batch_size)``
from the loop (per rank). Resume with ``set_epoch(e)`` (optional) then ``load_state_dict(state)``.
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
        self.position = 0  # items of this rank's epoch already yielded (or consumed, after load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning on the next ``__iter__`` (call ``load_state_dict`` after it to
        resume mid-epoch), as the trainer's sampler protocol (mm_excitor/train/batches.py) expects."""
        self.epoch, self.position = epoch, 0

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
        if self.position >= self.num_samples:  # a finished epoch iterated again without set_epoch
            self.position = 0
        order = self.indices()
        while self.position < self.num_samples:
            i = order[self.position]
            self.position += 1
            yield i

    def __len__(self) -> int:
        """Items per rank in a full epoch (the DistributedSampler meaning)."""
        return self.num_samples

    def state_dict(self, consumed: int | None = None) -> dict:
        """Plain-type state. ``consumed``: items of the current epoch the loop has actually used on this rank;
        defaults to what the sampler has yielded, which runs ahead under DataLoader prefetching."""
        position = self.position if consumed is None else int(consumed)
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"consumed={position} outside 0..{self.num_samples}")
        return {"epoch": self.epoch, "position": position, "seed": self.seed, "num_items": self.num_items,
                "world_size": self.world_size, "rank": self.rank, "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Restore epoch and position; refuses a state from a different data size, seed or sharding, which could
        not resume exactly."""
        for key in ("seed", "num_items", "world_size", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has "
                                 f"{getattr(self, key)!r}: cannot resume exactly")
        position = int(state["position"])
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"sampler state position {position} outside 0..{self.num_samples}")
        self.epoch, self.position = int(state["epoch"]), position
