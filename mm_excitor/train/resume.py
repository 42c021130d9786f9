"""Which checkpoint a run continues from, and whether it may: a resumed run must follow the trajectory the
checkpoint's run was on, so only settings that cannot change it may differ (and every difference is listed)."""
from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import adapter_config_differences, identity_differences
from ..diff import Difference, differences
from . import checkpoints as ckpt
from .state import ResumeState

FREE_TRAIN_KEYS = (
    # run length: extending or shortening a run is the point of resuming it (the cosine is re-planned from there)
    "train.epochs", "train.max_steps",
    # where and how often to write and report (evaluation runs under a forked RNG: its cadence changes nothing)
    "train.output_dir", "train.resume", "train.save_every_steps", "train.keep_last", "train.eval_every_steps",
    "train.eval_batch_size", "train.eval_max_batches", "train.log_every_steps", "train.tensorboard",
    "train.progress_bar",
    # how the same computation is placed on hardware (the world size is checked separately: it changes the batch)
    "train.num_workers", "train.device", "train.distributed", "train.find_unused_parameters",
)
"""Run-config keys (fnmatch patterns on dotted paths) that may differ when resuming; a task adds its own."""


class ResumeMismatchError(ValueError):
    """The checkpoint was written by a run on another trajectory (config, world size, model or data)."""


@dataclass(frozen=True)
class ResumeCheck:
    refused: list[str]
    allowed: list[str]


def find_checkpoint(output_dir: Path, resume: str | Path | bool | None) -> Path | None:
    """The checkpoint to continue from: None for a fresh run (refused if output_dir holds checkpoints), the latest
    one for `latest`/`auto`/True (or None when there is none yet), or an explicit checkpoint or output_dir."""
    existing = ckpt.find_latest(output_dir)
    if resume in (None, False, ""):
        if existing is not None:
            raise FileExistsError(
                f"{output_dir} already holds checkpoint {existing}; continue that run with train.resume=latest "
                "or choose another train.output_dir"
            )
        return None
    if resume is True or str(resume) in ("latest", "auto"):
        return existing
    path = Path(resume)
    if (path / ckpt.CHECKPOINTS).is_dir():  # an output_dir: take its latest
        found = ckpt.find_latest(path)
        if found is None:
            raise FileNotFoundError(f"no complete checkpoint under {path / ckpt.CHECKPOINTS}")
        return found
    if not ckpt.is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {ckpt.STATE_JSON})")
    return path


def check_resume(
    state: ResumeState,
    *,
    run_config: Mapping[str, Any],
    model: Mapping[str, Any],
    data: Mapping[str, Any],
    world_size: int,
    free_keys: Collection[str],
) -> ResumeCheck:
    """Sort every difference between the checkpoint's run and this one into refused and allowed."""
    def free(d: Difference) -> bool:
        return any(fnmatch.fnmatchcase(d.key, pattern) for pattern in free_keys)

    config_changes = differences(state.run_config, run_config)
    refused = [d.describe("checkpoint", "this run") for d in config_changes if not free(d)]
    allowed = [d.describe("checkpoint", "this run") for d in config_changes if free(d)]
    if state.world_size != world_size:
        refused.append(f"world_size: checkpoint {state.world_size}, this run {world_size} (the effective batch, "
                       "learning rate and data shards depend on it)")
    if state.model.get("method") != model.get("method"):
        refused.append(f"model.method: checkpoint {state.model.get('method')!r}, this run {model.get('method')!r}")
    refused += [f"adapter {d.describe('checkpoint', 'this run')}"
                for d in adapter_config_differences(state.model.get("config", {}), model.get("config", {}))]
    refused += [f"model.identity.{d.describe('checkpoint', 'this model')}"
                for d in identity_differences(state.model.get("identity", {}), model.get("identity", {}))]
    refused += [f"data.identity.{d.describe('checkpoint', 'this run')}" for d in differences(state.data, data)]
    return ResumeCheck(refused=refused, allowed=allowed)
