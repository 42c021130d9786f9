"""A step whose loss or gradient is not finite is skipped, named and counted; too many in a row end the run."""
from __future__ import annotations

import json

import pytest
import torch

from mm_excitor.train import NonFiniteStepsError, Trainer
from tests.train.helpers import (
    TokenDataset, collate, inf_loss_on_poison, make_config, make_model, make_sampler, read_metrics,
)

ITEMS = 16


def run(output_dir, poisoned: set[int], **overrides):
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(trainer, record):
        snapshots[record["step"]] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
                                     if p.requires_grad}

    trainer = Trainer(inf_loss_on_poison(make_model()), TokenDataset(ITEMS, poisoned=poisoned), collate,
                      make_sampler(ITEMS), make_config(output_dir, **overrides), callbacks=[snapshot])
    return trainer, snapshots


def test_a_step_with_an_inf_loss_is_skipped_and_named_with_its_samples(tmp_path, capsys):
    trainer, snapshots = run(tmp_path, {5}, max_steps=4)  # one epoch: item 5 is seen once
    summary = trainer.fit()
    skipped, = read_metrics(tmp_path, "skipped")
    step = skipped["step"]
    assert skipped["loss"] == "inf" and 5 in skipped["samples"] and len(skipped["samples"]) == 4
    assert summary["skipped_steps"] == [{"step": step, "samples": skipped["samples"]}]
    assert json.loads((tmp_path / "summary.json").read_text())["skipped_steps"] == summary["skipped_steps"]
    # nothing moved on the skipped step, and every other step learned
    before = snapshots[step - 1] if step > 1 else None
    for n, p in snapshots[step].items():
        if before is not None:
            assert torch.equal(p, before[n])
    assert all(not torch.equal(snapshots[s]["model.layers.3.self_attn.k_proj.gate"],
                               snapshots[s - 1]["model.layers.3.self_attn.k_proj.gate"])
               for s in range(2, 5) if s != step)
    assert {int(state["step"]) for state in trainer.optimizer.state.values()} == {3}  # 4 steps, one skipped
    records = {r["step"]: r for r in read_metrics(tmp_path)}
    assert records[step]["loss"] is None and records[step]["skipped_steps"] == 1
    assert all(torch.isfinite(torch.tensor(r["loss"])) for s, r in records.items() if s != step)
    assert all(torch.isfinite(t).all() for t in trainer.model.parameters())
    out = capsys.readouterr().out
    assert f"step {step}: skipped (loss inf" in out
    assert f"1 step(s) skipped for a non-finite loss or gradient norm: {step}" in out


def test_more_skipped_steps_in_a_row_than_allowed_end_the_run_with_one_error(tmp_path):
    trainer, _ = run(tmp_path, set(range(ITEMS)), max_consecutive_skipped_steps=2)
    with pytest.raises(NonFiniteStepsError) as error:
        trainer.fit()
    message = str(error.value)
    assert isinstance(error.value, ValueError) and "\n" not in message
    assert message.startswith("3 optimizer steps in a row (1-3) had a non-finite loss or gradient norm, more than "
                              "train.max_consecutive_skipped_steps=2; training samples of the last one: ")
    assert [r["in_a_row"] for r in read_metrics(tmp_path, "skipped")] == [1, 2, 3]
