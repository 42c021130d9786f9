"""ResumableSampler: per-epoch determinism, rank sharding, exact mid-epoch resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DistributedSampler

from data.sampler import ResumableSampler


def _epoch(sampler: ResumableSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_deterministic_per_epoch_and_different_across_epochs():
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 1) == _epoch(b, 1)
    assert _epoch(a, 0) != _epoch(a, 1)
    assert sorted(_epoch(a, 2)) == list(range(50))
    assert _epoch(ResumableSampler(50, seed=4), 0) != _epoch(ResumableSampler(50, seed=3), 0)
    assert _epoch(ResumableSampler(5, shuffle=False), 3) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("drop_last", [False, True])
def test_matches_distributed_sampler(drop_last: bool):
    dataset = list(range(23))
    for rank in range(4):
        ours = ResumableSampler(23, seed=9, rank=rank, world_size=4, drop_last=drop_last)
        ref = DistributedSampler(dataset, num_replicas=4, rank=rank, shuffle=True, seed=9, drop_last=drop_last)
        for epoch in (0, 1):
            ref.set_epoch(epoch)
            assert _epoch(ours, epoch) == list(ref)
        assert len(ours) == len(ref)


def test_shards_are_disjoint_and_cover_the_data():
    shards = [_epoch(ResumableSampler(40, seed=1, rank=r, world_size=4), 5) for r in range(4)]
    assert all(len(s) == 10 for s in shards)
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == 40 and sorted(flat) == list(range(40))
    dropped = [_epoch(ResumableSampler(42, seed=1, rank=r, world_size=4, drop_last=True), 0) for r in range(4)]
    assert len({i for s in dropped for i in s}) == 40 == sum(len(s) for s in dropped)


def test_trainer_protocol_state_at_epoch_start_plus_skipped_indices():
    """mm_excitor's trainer: set_epoch, state_dict() at the epoch start, later load it and skip what was consumed."""
    s = ResumableSampler(25, seed=2, rank=0, world_size=2)
    s.set_epoch(4)
    start_state = s.state_dict()
    full = list(s)
    s.set_epoch(4)  # set_epoch always restarts the epoch, even the current one
    assert list(s) == full
    fresh = ResumableSampler(25, seed=2, rank=0, world_size=2)
    fresh.load_state_dict(json.loads(json.dumps(start_state)))  # plain types only
    it = iter(fresh)
    consumed = 5
    for _ in range(consumed):
        next(it)
    assert list(it) == full[consumed:]


def test_state_from_another_configuration_is_refused():
    state = ResumableSampler(30, seed=7).state_dict()
    with pytest.raises(ValueError, match="num_items=30"):
        ResumableSampler(31, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        ResumableSampler(30, seed=7, world_size=2).load_state_dict(state)


def test_iterating_again_without_set_epoch_repeats_the_epoch():
    s = ResumableSampler(10, seed=0)
    assert list(s) == list(s)
    assert torch.tensor(list(s)).unique().numel() == 10
