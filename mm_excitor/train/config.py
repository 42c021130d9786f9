"""The training recipe as one dataclass: every number a run depends on, validated at construction.

Defaults follow LLaMA-Adapter's recipe (docs/method.md §3); YAML recipes in `configs/` override them. Which
keys may change when a run is resumed: `resume.FREE_TRAIN_KEYS`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
DISTRIBUTED_MODES = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
RESUME_SCHEDULES = ("keep", "replan")


@dataclass
class TrainConfig:
    """How one training run optimises the trainable (requires_grad) tensors of a model."""

    # optimiser
    blr: float = 9e-3
    """Base learning rate; the actual rate is blr * effective_batch / 256 (LLaMA-Adapter's scaling rule)."""
    lr: float | None = None
    """Absolute learning rate; when set it is used as is and blr is ignored."""
    min_lr: float = 0.0
    """Where the half-cycle cosine ends."""
    weight_decay: float = 0.02
    """AdamW decay on matrices only; gates, norms, biases and every 1-d tensor get none (see optim.py)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: float | None = None
    """Max global L2 norm of the trainable gradients; None disables clipping (the norm is still logged)."""
    max_consecutive_skipped_steps: int = 20
    """A step whose loss or gradient norm is not finite (on any rank) is skipped: no update, logged with its samples.
    More skipped steps in a row than this end the run with an error (0: the first one does). fp16's loss-scale
    backoffs count too, hence the margin."""

    # batch and run length
    batch_size: int = 4
    """Micro-batch per device."""
    grad_accum_steps: int = 1
    epochs: float | None = 5.0
    """Run length in passes over the training set; ignored when max_steps is set."""
    max_steps: int | None = None
    """Run length in optimiser steps; takes precedence over epochs."""
    warmup_epochs: float | None = 2.0
    """Linear warm-up length in epochs; ignored when warmup_steps is set."""
    warmup_steps: int | None = None
    drop_last: bool = True
    """Drop each epoch's last incomplete micro-batch so that every step sees the same number of samples."""

    # numerics and reproducibility
    precision: str = "bf16"
    """'fp32', or autocast to 'bf16'/'fp16' with fp32 trainable tensors; fp16 adds a GradScaler."""
    seed: int = 0

    # output and cadence
    output_dir: str = "runs/excitor"
    save_every_steps: int = 500
    keep_last: int | None = 3
    """How many step-k checkpoints to keep (plus `best`); None keeps all."""
    eval_every_steps: int = 500
    eval_batch_size: int | None = None
    """Per-device validation batch; None uses batch_size."""
    eval_max_batches: int | None = None
    """Cap on validation batches (over all ranks) per evaluation; None evaluates the whole set."""
    log_every_steps: int = 10
    tensorboard: bool = True
    progress_bar: bool = True
    resume: str | None = None
    """None: fresh run (refused if output_dir already holds checkpoints); 'latest': the newest intact checkpoint in
    output_dir (damaged ones are passed over with a warning), or a fresh run if there is none; 'step-N': that
    checkpoint of output_dir; otherwise the path of a checkpoint directory or of another run's output_dir."""
    resume_schedule: str = "keep"
    """When a resumed run is longer or shorter than the checkpoint's (max_steps, epochs): 'keep' the checkpoint's
    learning-rate schedule (the run follows the trajectory it was on; steps past its end run at min_lr), or
    'replan' warm-up and cosine for the new length (a new trajectory from the checkpoint on)."""

    # hardware
    num_workers: int = 2
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    distributed: str = "ddp"
    """With more than one process: 'ddp' (a replica per device) or 'fsdp' (sharded frozen base, see docs/usage.md)."""
    find_unused_parameters: bool | None = None
    """DDP only; None decides from the model (see distributed.py)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives lists
        errors = []
        if self.precision not in PRECISIONS:
            errors.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.resume_schedule not in RESUME_SCHEDULES:
            errors.append(f"resume_schedule must be one of {RESUME_SCHEDULES}, got {self.resume_schedule!r}")
        if self.distributed not in DISTRIBUTED_MODES:
            errors.append(f"distributed must be one of {DISTRIBUTED_MODES}, got {self.distributed!r}")
        if self.device not in DEVICES:
            errors.append(f"device must be one of {DEVICES}, got {self.device!r}")
        for name in ("batch_size", "grad_accum_steps", "save_every_steps", "eval_every_steps", "log_every_steps"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is None and (self.epochs is None or self.epochs <= 0):
            errors.append("set max_steps or a positive epochs")
        if self.max_steps is not None and self.max_steps < 1:
            errors.append(f"max_steps must be >= 1, got {self.max_steps}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            errors.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.keep_last is not None and self.keep_last < 1:
            errors.append(f"keep_last must be >= 1 or None (keep all), got {self.keep_last}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            errors.append(f"clip_grad must be > 0 or None, got {self.clip_grad}")
        if self.max_consecutive_skipped_steps < 0:
            errors.append(f"max_consecutive_skipped_steps must be >= 0, got {self.max_consecutive_skipped_steps}")
        if self.num_workers < 0:
            errors.append(f"num_workers must be >= 0, got {self.num_workers}")
        for name in ("blr", "min_lr", "weight_decay", "eps"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if errors:
            raise ValueError("invalid TrainConfig: " + "; ".join(errors))

    def effective_batch(self, world_size: int) -> int:
        """Samples per optimiser step over all devices."""
        return self.batch_size * self.grad_accum_steps * world_size

    def learning_rate(self, world_size: int) -> float:
        return self.lr if self.lr is not None else self.blr * self.effective_batch(world_size) / 256

    def schedule_lengths(self, micro_batches_per_epoch: int) -> tuple[int, int]:
        """(total optimiser steps, warm-up steps) for an epoch of `micro_batches_per_epoch` per-device batches."""
        steps_per_epoch = micro_batches_per_epoch / self.grad_accum_steps
        if self.max_steps is not None:
            total = self.max_steps
        else:
            total = math.floor(self.epochs * micro_batches_per_epoch / self.grad_accum_steps)
        if total < 1:
            raise ValueError(
                f"the run has no optimiser step: {micro_batches_per_epoch} micro-batches per epoch, "
                f"grad_accum_steps={self.grad_accum_steps}, epochs={self.epochs}"
            )
        if self.warmup_steps is not None:
            warmup = self.warmup_steps
        elif self.warmup_epochs is not None:
            warmup = round(self.warmup_epochs * steps_per_epoch)
        else:
            warmup = 0
        return total, min(warmup, total)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values
