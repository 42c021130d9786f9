"""Which checkpoint a run continues from, and whether it may: a resumed run must follow the trajectory the
checkpoint's run was on, so only settings that cannot change it may differ (and every difference is listed)."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapter_io import adapter_config_differences
from ..identity import identity_differences
from ..diff import Difference, differences
from ..integrity import DamagedCheckpointError
from . import checkpoints as ckpt
from .state import ResumeState

FREE_TRAIN_KEYS = (
    # run length: extending or shortening a run is the point of resuming it (the learning-rate schedule stays the
    # checkpoint's unless resume_schedule says to re-plan it: see resumed_schedule)
    "train.epochs", "train.max_steps", "train.resume_schedule",
    # where and how often to write and report (evaluation runs under a forked RNG: its cadence changes nothing)
    "train.output_dir", "train.resume", "train.save_every_steps", "train.keep_last", "train.eval_every_steps",
    "train.eval_batch_size", "train.eval_max_batches", "train.log_every_steps", "train.tensorboard",
    "train.progress_bar",
    # when a diverging run gives up (a step that is skipped changes nothing, whatever the limit)
    "train.max_consecutive_skipped_steps",
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


def find_checkpoint(output_dir: Path, resume: str | Path | bool | None,
                    warn: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to continue from, checked against its checksums (see the resume policy in README.md).

    None/"" is a fresh run (refused if output_dir holds checkpoints). `latest`/`auto`/True, or another run's
    output_dir, take the newest intact step directory there, passing over damaged ones with a warning; with none at
    all `latest` starts afresh, and with only damaged ones it is an error listing them. A checkpoint named by hand
    (`step-N` under output_dir/checkpoints, or a path) must be intact."""
    if resume in (None, False, ""):
        existing = ckpt.find_latest(output_dir)
        if existing is not None:
            raise FileExistsError(
                f"{output_dir} already holds checkpoint {existing}; continue that run with train.resume=latest "
                "or choose another train.output_dir"
            )
        return None
    if resume is True or str(resume) in ("latest", "auto"):
        return _newest_intact(output_dir, warn)
    path = Path(resume)
    named = output_dir / ckpt.CHECKPOINTS / str(resume)
    if len(path.parts) == 1 and not path.is_dir() and named.is_dir():
        path = named  # step-N (or best) of this run
    if (path / ckpt.CHECKPOINTS).is_dir():  # an output_dir: take its newest intact checkpoint
        found = _newest_intact(path, warn)
        if found is None:
            raise FileNotFoundError(f"no checkpoint under {path / ckpt.CHECKPOINTS}")
        return found
    if not path.is_dir():
        raise FileNotFoundError(f"{resume} is not a checkpoint directory, nor step-N under "
                                f"{output_dir / ckpt.CHECKPOINTS}")
    problem = ckpt.damage(path)
    if problem is not None:
        raise DamagedCheckpointError(f"cannot resume from {path}: {problem}")
    _warn_unverified(path, warn)
    return path


def _newest_intact(output_dir: Path, warn: Callable[[str], None]) -> Path | None:
    damaged: list[str] = []
    for candidate in ckpt.resume_candidates(output_dir):
        problem = ckpt.damage(candidate)
        if problem is None:
            if damaged:
                warn(f"warning: passing over damaged checkpoint(s) {'; '.join(damaged)}; resuming from {candidate}, "
                     "the newest intact one")
            _warn_unverified(candidate, warn)
            return candidate
        damaged.append(f"{candidate.name} ({problem})")
    if damaged:
        raise DamagedCheckpointError(
            f"no intact checkpoint under {output_dir / ckpt.CHECKPOINTS}; found:" + "".join(f"\n  {d}" for d in damaged)
            + "\nStart a new run in another train.output_dir, or resume another run's checkpoint by path."
        )
    return None


def _warn_unverified(path: Path, warn: Callable[[str], None]) -> None:
    if not ckpt.has_checksums(path):
        warn(f"{path} has no checksums (written by an older version): resuming from it unverified")


def resumed_schedule(saved: Mapping[str, Any], planned: tuple[int, int], policy: str, *, step: int,
                     min_lr: float) -> tuple[tuple[int, int], str | None]:
    """The (total, warm-up) steps of the learning-rate schedule a resumed run follows, and a line saying so when it
    is not what this run's config plans: the checkpoint's under policy 'keep', the planned one under 'replan'."""
    if not saved or (saved["total_steps"], saved["warmup_steps"]) == planned:
        return planned, None
    old = (saved["total_steps"], saved["warmup_steps"])

    def describe(schedule: tuple[int, int]) -> str:
        return f"warm-up {schedule[1]}, cosine to min_lr={min_lr:g} at step {schedule[0]}"

    if policy == "keep":
        after = f", then min_lr up to step {planned[0]}" if planned[0] > old[0] else ""
        return old, (f"this run stops at step {planned[0]}; the learning-rate schedule stays the checkpoint's: "
                     f"{describe(old)}{after} (train.resume_schedule=replan re-plans it)")
    return planned, (f"this run stops at step {planned[0]}; the learning-rate schedule is re-planned from step "
                     f"{step + 1}: {describe(planned)} (was: {describe(old)})")


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
                for d in adapter_config_differences(model["method"], state.model.get("config", {}),
                                                    model.get("config", {}))]
    refused += [f"model.identity.{d.describe('checkpoint', 'this model')}"
                for d in identity_differences(state.model.get("identity", {}), model.get("identity", {}))]
    refused += [f"data.identity.{d.describe('checkpoint', 'this run')}" for d in differences(state.data, data)]
    return ResumeCheck(refused=refused, allowed=allowed)
