"""Child process for the subprocess tests: tiny training runs, optionally under torchrun.

    python -m tests.train.tiny_run '<json list of phases>'

Each phase is a dict of TrainConfig overrides plus: items (dataset size), val_items (validation set size),
variable_prompts and image_every (TokenDataset's; image_every makes the model the multimodal Excitor), method (that
method's model instead, fed visual tokens), stop_at (rank 0 sends itself SIGTERM
after that step), sleep (seconds per step, to give a parent time to signal), raise_on_interrupt (let the
TrainingInterrupted exit the process), rank1_output_dir (ranks > 0 get this output_dir: it must stay empty), sigkill_in_checkpoint_write_at (the
process SIGKILLs itself after writing step k's files into the scratch directory, before the rename), poisoned
(TokenDataset items whose loss is made inf), enospc_in_checkpoint_write_at (writing step k's optimizer state fails
with ENOSPC; the CheckpointWriteError is printed and the next phase runs).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time

import torch

from mm_excitor.train import CheckpointWriteError, Trainer, TrainingInterrupted, cleanup_distributed, init_distributed
from tests.train.helpers import (
    TokenDataset, collate, inf_loss_on_poison, make_config, make_method_model, make_model, make_multimodal_model,
    make_sampler,
)


def run_phase(phase: dict) -> None:
    phase = dict(phase)
    items = phase.pop("items", 16)
    val_items = phase.pop("val_items", 0)
    data = {"variable_prompts": phase.pop("variable_prompts", False), "image_every": phase.pop("image_every", None),
            "poisoned": phase.pop("poisoned", ())}
    multimodal = data["image_every"] is not None
    method = phase.pop("method", None)
    stop_at = phase.pop("stop_at", None)
    sleep = phase.pop("sleep", 0.0)
    raise_on_interrupt = phase.pop("raise_on_interrupt", False)
    rank1_output_dir = phase.pop("rank1_output_dir", None)
    kill_at = phase.pop("sigkill_in_checkpoint_write_at", None)
    full_disk_at = phase.pop("enospc_in_checkpoint_write_at", None)
    if kill_at is not None:
        import mm_excitor.train.checkpoints as checkpoints

        original = checkpoints.write_resume_state

        def write_then_die(directory, state):
            original(directory, state)
            if state.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoints.write_resume_state = write_then_die
    import mm_excitor.train.state as state_module

    write = state_module.atomic_write_bytes

    def full_disk(path, data):
        if f".step-{full_disk_at}." in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    if full_disk_at is not None:
        state_module.atomic_write_bytes = full_disk
    info = init_distributed("cpu")
    if info.rank > 0 and rank1_output_dir:
        phase["output_dir"] = rank1_output_dir
    config = make_config(phase.pop("output_dir"), **phase)

    def report(trainer: Trainer, record: dict) -> None:
        if trainer.is_main:
            print(f"STEP {record['step']}", flush=True)
        if sleep:
            time.sleep(sleep)
        if stop_at is not None and record["step"] == stop_at and trainer.is_main:
            os.kill(os.getpid(), signal.SIGTERM)

    sampler = make_sampler(items, seed=0, rank=info.rank, world_size=info.world_size)
    val = TokenDataset(val_items, offset=50, **{**data, "poisoned": ()}) if val_items else None
    model = make_method_model(method) if method else make_multimodal_model() if multimodal else make_model()
    trainer = Trainer(inf_loss_on_poison(model), TokenDataset(items, **data), collate, sampler, config, val_dataset=val,
                      callbacks=[report])
    try:
        trainer.fit()
    except TrainingInterrupted as stop:
        if raise_on_interrupt:
            raise
        print(f"INTERRUPTED {stop.step} rank {info.rank}", flush=True)
    except CheckpointWriteError as error:
        print(f"WRITE FAILED rank {info.rank}: {error}", flush=True)
    finally:
        state_module.atomic_write_bytes = write


def main() -> None:
    torch.set_num_threads(1)
    for phase in json.loads(sys.argv[1]):
        run_phase(phase)
    cleanup_distributed()


if __name__ == "__main__":
    main()
