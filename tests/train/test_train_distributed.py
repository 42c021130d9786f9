"""torchrun with 2 CPU processes (gloo): DDP and FSDP runs equal a 1-process run with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from mm_excitor.train.distributed import default_find_unused
from mm_excitor.train import Trainer
from tests.train.helpers import (
    TokenDataset, adapter_tensors, collate, inf_loss_on_poison, make_config, make_method_model, make_model,
    make_multimodal_model, make_sampler, read_metrics,
)

REPO = Path(__file__).resolve().parents[2]
STEPS = 6  # 16 items, global batch 4: 4 steps per epoch, so the run crosses an epoch
# 5 validation items in batches of 2: 3 batches over 2 ranks, so one rank pads with a weight-0 batch
EVAL = {"eval_every_steps": 3, "eval_batch_size": 2}
# Prompts of 3 to 9 tokens: ranks and micro-batches hold different numbers of label tokens, so they only agree
# with one process when the loss is normalised by the global label-token count.
DATA = {"variable_prompts": True}
MULTIMODAL = {"variable_prompts": True, "image_every": 2}  # half the items text-only
BASELINES = ("lora", "llama_adapter", "prefix")
POISONED = 5  # an item whose loss is made inf: it lands on one rank only
# Where a tensor's first gradients are tiny (LoRA's A behind a B that is still near zero; the visual projection
# behind gates that are still near zero), Adam divides them by their own size, so the sum-order differences of 2
# ranks grow to 1.5e-6 (LoRA's A, entries ~0.14; Intel Xeon) and 1.1e-6 (the projection, entries ~0.37; AMD EPYC)
# where they stay below 3e-7 elsewhere. A wrong step is off by the step itself (lr ~8e-3 here).
ADAM_AMPLIFIED_ATOL = 1e-5


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory) -> tuple[Path, str]:
    """One 2-process launch: DDP; FSDP stopped by SIGTERM on rank 0 after step 3, then resumed; the same for the
    multimodal Excitor; DDP on the multimodal model with text-only batches only; FSDP for LoRA (the prefix code
    path, and peft's modules as FSDP units); DDP with text-only batches for every baseline method; DDP with an inf
    loss on one rank; DDP with a checkpoint write that fails on rank 0 (the last phase: it ends with an error)."""
    if not dist.is_gloo_available():
        pytest.skip("gloo backend unavailable")
    root = tmp_path_factory.mktemp("torchrun")
    common = {"batch_size": 2, "max_steps": STEPS, "save_every_steps": 2, "val_items": 5, **EVAL}

    def phase(name: str, data: dict, **extra) -> dict:
        return {**common, **data, "output_dir": str(root / name), "rank1_output_dir": str(root / f"{name}-rank1"),
                **extra}

    phases = [
        phase("ddp", DATA),
        phase("fsdp", DATA, distributed="fsdp", stop_at=3),
        phase("fsdp", DATA, distributed="fsdp", resume="latest"),
        phase("mm-fsdp", MULTIMODAL, distributed="fsdp", stop_at=3),
        phase("mm-fsdp", MULTIMODAL, distributed="fsdp", resume="latest"),
        phase("mm-text-only", {"image_every": 0}, max_steps=3),
        phase("lora-fsdp", MULTIMODAL, distributed="fsdp", method="lora", val_items=0),
        *(phase(f"{method}-text-only", {"image_every": 0}, max_steps=2, method=method, val_items=0)
          for method in BASELINES),
        phase("ddp-inf", {**DATA, "poisoned": [POISONED]}, max_steps=4, val_items=0),
        phase("ddp-full-disk", DATA, max_steps=4, val_items=0, enospc_in_checkpoint_write_at=4),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tests.train.tiny_run", json.dumps(phases)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=420,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return root, output


def one_process_run(output_dir: Path, data: dict, method: str | None = None, validate: bool = True,
                    model: torch.nn.Module | None = None, **overrides) -> Path:
    """The same global batch (4) in one process."""
    if model is None:
        model = (make_method_model(method) if method else make_multimodal_model() if "image_every" in data
                 else make_model())
    config = make_config(output_dir, **{"batch_size": 4, "max_steps": STEPS, "save_every_steps": 2, **EVAL,
                                        **overrides})
    Trainer(model, TokenDataset(16, **data), collate, make_sampler(16), config,
            val_dataset=TokenDataset(5, offset=50, **data) if validate else None).fit()
    return output_dir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    return one_process_run(tmp_path_factory.mktemp("one"), DATA)


@pytest.fixture(scope="module")
def one_process_multimodal(tmp_path_factory) -> Path:
    return one_process_run(tmp_path_factory.mktemp("one-mm"), MULTIMODAL)


def assert_close_adapters(a: Path, b: Path, atol: float) -> None:
    x, y = adapter_tensors(a), adapter_tensors(b)
    assert x.keys() == y.keys()
    for name in x:
        torch.testing.assert_close(x[name], y[name], atol=atol, rtol=0, msg=name)


def test_ddp_on_two_ranks_equals_one_rank_with_the_same_global_batch(torchrun, one_process):
    root, _ = torchrun
    assert_close_adapters(root / "ddp/checkpoints/step-6", one_process / "checkpoints/step-6", atol=1e-6)
    ddp, ref = read_metrics(root / "ddp"), read_metrics(one_process)
    assert [r["step"] for r in ddp] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in ref], abs=1e-6)
    assert [r["lr"] for r in ddp] == [r["lr"] for r in ref]  # same effective batch, same learning rate
    state = json.loads((root / "ddp/checkpoints/step-6/trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng_states"]) == 2 and len(state["sampler_states"]) == 2
    summary = json.loads((root / "ddp/summary.json").read_text())
    assert summary["samples"] == STEPS * 4 and summary["effective_batch"] == 4


def test_gradient_accumulation_equals_one_big_batch_on_variable_length_answers(one_process, tmp_path):
    """Two micro-batches of 2 weigh every label token like one batch of 4 (not each micro-batch's mean equally)."""
    accumulated = one_process_run(tmp_path, DATA, batch_size=2, grad_accum_steps=2)
    assert_close_adapters(accumulated / "checkpoints/step-6", one_process / "checkpoints/step-6", atol=1e-6)
    assert [r["loss"] for r in read_metrics(accumulated)] == pytest.approx(
        [r["loss"] for r in read_metrics(one_process)], abs=1e-6)


def test_validation_loss_and_best_do_not_depend_on_the_number_of_ranks(torchrun, one_process):
    root, _ = torchrun
    ref = [(r["step"], r["loss"]) for r in read_metrics(one_process, "val")]
    assert [s for s, _ in ref] == [3, 6]
    for run in ("ddp", "fsdp"):
        val = [(r["step"], r["loss"]) for r in read_metrics(root / run, "val")]
        assert [s for s, _ in val] == [3, 6]
        assert [v for _, v in val] == pytest.approx([v for _, v in ref], abs=1e-6)
        best = json.loads((root / run / "checkpoints/best/trainer_state.json").read_text())
        assert best["step"] == json.loads((one_process / "checkpoints/best/trainer_state.json").read_text())["step"]
        assert_close_adapters(root / run / "checkpoints/best", one_process / "checkpoints/best", atol=1e-6)


def test_only_rank_0_writes_files(torchrun):
    root, _ = torchrun
    # rank 1 was given its own output_dir: anything it wrote would be there
    assert not any((root / f"{name}-rank1").exists() for name in ("ddp", "fsdp", "mm-fsdp", "mm-text-only",
                                                                   "lora-fsdp", "prefix-text-only", "ddp-inf",
                                                                   "ddp-full-disk"))
    assert sorted(p.name for p in (root / "ddp").iterdir()) == [
        "checkpoints", "metrics.jsonl", "summary.json", "train_config.json"
    ]


def test_fsdp_stops_on_a_signal_to_one_rank_resumes_and_matches(torchrun, one_process):
    root, output = torchrun
    assert "INTERRUPTED 3 rank 0" in output and "INTERRUPTED 3 rank 1" in output  # all ranks agreed to stop
    assert "resumed from" in output
    assert_close_adapters(root / "fsdp/checkpoints/step-6", one_process / "checkpoints/step-6", atol=1e-6)
    assert sorted(r["step"] for r in read_metrics(root / "fsdp")) == list(range(1, STEPS + 1))


def test_multimodal_fsdp_stops_resumes_and_equals_one_process(torchrun, one_process_multimodal):
    root, _ = torchrun
    assert_close_adapters(root / "mm-fsdp/checkpoints/step-6", one_process_multimodal / "checkpoints/step-6",
                          atol=ADAM_AMPLIFIED_ATOL)
    assert [r["loss"] for r in read_metrics(root / "mm-fsdp")] == pytest.approx(
        [r["loss"] for r in read_metrics(one_process_multimodal)], abs=1e-6)
    trained = adapter_tensors(root / "mm-fsdp/checkpoints/step-6")
    assert "projection.linear.weight" in trained and trained["projection.linear.weight"].abs().sum() > 0


def test_ddp_needs_no_unused_parameter_search_even_on_text_only_batches(torchrun):
    """The multimodal Excitor declares that every trainable tensor takes part in every step, so DDP runs without
    find_unused_parameters (no graph search per step); batches with no image at all prove it (DDP would fail at
    the next step if the projection had no gradient)."""
    root, _ = torchrun
    assert sorted(r["step"] for r in read_metrics(root / "mm-text-only")) == [1, 2, 3]
    assert default_find_unused(make_multimodal_model()) is False
    assert default_find_unused(make_model()) is False


def test_lora_under_fsdp_equals_one_process(torchrun, tmp_path):
    root, _ = torchrun
    reference = one_process_run(tmp_path, MULTIMODAL, method="lora", validate=False)
    assert_close_adapters(root / "lora-fsdp/checkpoints/step-6", reference / "checkpoints/step-6",
                          atol=ADAM_AMPLIFIED_ATOL)
    assert [r["loss"] for r in read_metrics(root / "lora-fsdp")] == pytest.approx(
        [r["loss"] for r in read_metrics(reference)], abs=1e-6)


@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_trains_text_only_batches_under_ddp_without_an_unused_parameter_search(torchrun, method):
    root, _ = torchrun
    assert sorted(r["step"] for r in read_metrics(root / f"{method}-text-only")) == [1, 2]
    assert default_find_unused(make_method_model(method)) is False


def test_a_non_finite_loss_on_one_rank_is_skipped_on_every_rank_as_in_one_process(torchrun, tmp_path):
    root, _ = torchrun
    reference = one_process_run(tmp_path, {**DATA, "poisoned": [POISONED]}, validate=False, max_steps=4,
                                model=inf_loss_on_poison(make_model()))
    skipped, = read_metrics(root / "ddp-inf", "skipped")
    assert skipped == {**read_metrics(reference, "skipped")[0], "time": skipped["time"]}  # step, samples of both ranks
    assert POISONED in skipped["samples"] and len(skipped["samples"]) == 4
    assert json.loads((root / "ddp-inf/summary.json").read_text())["skipped_steps"] == [
        {"step": skipped["step"], "samples": skipped["samples"]}]
    assert_close_adapters(root / "ddp-inf/checkpoints/step-4", reference / "checkpoints/step-4", atol=1e-6)


def test_a_failed_checkpoint_write_on_rank_0_ends_the_run_on_every_rank(torchrun):
    root, output = torchrun
    checkpoints = root / "ddp-full-disk/checkpoints"
    for rank in (0, 1):
        assert (f"WRITE FAILED rank {rank}: could not write checkpoint {checkpoints / 'step-4'} (No space left on "
                f"device); the last complete checkpoint is {checkpoints / 'step-2'}") in output
    assert (checkpoints / "latest").read_text().strip() == "step-2"
