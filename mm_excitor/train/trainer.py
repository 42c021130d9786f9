"""The training loop: one engine for every task and every adapter method.

The model is any module whose trainable tensors have requires_grad, whose forward takes a batch's `inputs` as
keyword arguments plus `num_items_in_batch` and returns an object with `.loss` (the summed token loss divided by
`num_items_in_batch`, as Hugging Face causal LMs do), and that `adapter_io.adapter_metadata` can describe (a
`VisionLanguageModel` of any method, or a Hugging Face LM with Excitor blocks). Data arrive by injection: a
dataset, a collate function returning `Batch`es and a resumable sampler, so this package never imports `data`.

Around the loop: `distributed` (process group, DDP/FSDP), `resume` (which checkpoint, may it continue),
`checkpoints` + `state` (what is written), `validation`, `signals` (stop at a step boundary), `reporting`.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..cli import format_ids
from ..adapter_io import adapter_metadata, load_adapter
from ..identity import state_fingerprint
from ..language_model import keep_trainable_in_fp32, trainable_state_dict
from ..io import atomic_write_json
from . import checkpoints as ckpt
from .batches import Batch, MicroBatches, ResumableSamplerProtocol
from .config import TrainConfig
from .distributed import (
    DistInfo, all_reduce, broadcast_object, full_tensor, gather_objects, gradient_sync, init_distributed,
    is_fsdp, load_optimizer_state, optimizer_state, trainable_state, unwrap, wrap_model,
)
from .metrics import MetricsLogger, peak_memory, say
from .optim import build_optimizer, lr_at, set_lr
from .reporting import Interval, RunTotals, json_number, progress_postfix, summary_lines, write_summary
from .resume import FREE_TRAIN_KEYS, ResumeMismatchError, check_resume, find_checkpoint, resumed_schedule
from .signals import StopSignals, TrainingInterrupted
from .state import ResumeState, capture_rng, preserved_rng, read_resume_state, restore_rng, seed_everything
from .validation import validation_loss

RUN_FILE = "train_config.json"
StepCallback = Callable[["Trainer", dict[str, Any]], None]
SampleFn = Callable[[nn.Module], Sequence[Any]]


class NonFiniteStepsError(ValueError):
    """More optimizer steps in a row than train.max_consecutive_skipped_steps had a non-finite loss or gradient."""


class Trainer:
    """Fit the trainable (requires_grad) tensors of `model` on `train_dataset`; see README.md for the recipe.

    `sampler` yields this rank's dataset indices (batches.ResumableSamplerProtocol). `sample_fn(model)`, if given,
    returns a few generations (strings or JSON-able dicts) to log at each evaluation; it receives the unwrapped
    model in eval mode under no_grad. `callbacks` are called after every optimiser step with the trainer and that
    step's record. `run_config` (the entry point's whole config as plain data) is stored in checkpoints; resuming
    refuses any difference except the keys matched by `resume.FREE_TRAIN_KEYS` and `resume_free_keys`, and any
    difference of `data_identity` (what the caller says identifies the training data).
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        collate_fn: Callable[[list[Any]], Batch],
        sampler: ResumableSamplerProtocol,
        config: TrainConfig,
        val_dataset: Dataset | None = None,
        val_collate_fn: Callable[[list[Any]], Batch] | None = None,
        sample_fn: SampleFn | None = None,
        *,
        callbacks: Sequence[StepCallback] = (),
        run_config: Mapping[str, Any] | None = None,
        resume_free_keys: Collection[str] = (),
        data_identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.dist: DistInfo = init_distributed(config.device)
        if config.precision == "fp16" and config.distributed == "fsdp" and self.dist.distributed:
            raise ValueError("precision='fp16' is not supported with FSDP (the GradScaler would not see other ranks' "
                             "overflows); use 'bf16'")
        self.model = model
        self.adapter = adapter_metadata(model)  # before sharding: the identity reads frozen weights
        keep_trainable_in_fp32(model)
        if val_dataset is not None and len(val_dataset) == 0:
            raise ValueError("val_dataset is empty; pass None to train without validation")
        self.val_dataset, self.val_collate_fn = val_dataset, val_collate_fn or collate_fn
        self.sample_fn, self.callbacks = sample_fn, list(callbacks)
        self.run_config = {**(run_config or {}), "train": config.to_dict()}
        self.free_keys = (*FREE_TRAIN_KEYS, *resume_free_keys)
        self.data_identity = dict(data_identity or {})
        self.output_dir = Path(config.output_dir)
        self.batches = MicroBatches(
            train_dataset, sampler, collate_fn, config.batch_size, drop_last=config.drop_last,
            num_workers=config.num_workers, seed=config.seed, rank=self.dist.rank,
            pin_memory=self.dist.device.type == "cuda",
        )
        self.total_steps, self.warmup_steps = config.schedule_lengths(self.batches.per_epoch())
        self.schedule_steps = self.total_steps
        """Where the cosine ends: the run's length, unless a resumed run keeps the checkpoint's schedule."""
        self.lr = config.learning_rate(self.dist.world_size)
        self.step = 0
        self.totals = RunTotals(self.dist)
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self.adapter_fingerprint: str | None = None
        """sha256 of the adapter as last saved (every rank knows it): what evaluation outputs are tied to."""
        self._fitted = False

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def fit(self, resume: str | Path | bool | None = None) -> dict[str, Any]:
        """Train to `total_steps` (resuming if asked, see TrainConfig.resume) and return the run summary.

        Raises TrainingInterrupted (a SystemExit) after saving a checkpoint when SIGTERM/SIGINT arrives.
        """
        if self._fitted:
            raise RuntimeError("Trainer.fit() runs once per Trainer")
        self._fitted = True
        state = self._prepare(self.config.resume if resume is None else resume)
        self.wrapped = wrap_model(self.model, self.config.distributed, self.dist, self.config.find_unused_parameters)
        self.optimizer = build_optimizer(unwrap(self.wrapped), self.config, self.lr)
        self.trainable = [p for p in unwrap(self.wrapped).parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=self.config.precision == "fp16")
        if state is not None:
            self._restore(state)
        else:
            seed_everything(self.config.seed + self.dist.rank)
        self.metrics = MetricsLogger(self.output_dir, enabled=self.is_main, tensorboard=self.config.tensorboard,
                                     resume_step=self.step if state is not None else None)
        if self.is_main:
            atomic_write_json(self.output_dir / RUN_FILE, self._run_description())
        try:
            with StopSignals(self.dist) as signals:
                stop = self._loop(signals)
        finally:
            self.metrics.close()
        summary = self._summary(interrupted=stop.name if stop is not None else None)
        if self.is_main:
            write_summary(summary, self.output_dir)
            for line in summary_lines(summary):
                say(self.dist, line)
        if stop is not None:
            error = TrainingInterrupted(stop.name, int(stop), self.step, self.last_checkpoint)
            say(self.dist, f"{error}; continue with train.resume=latest")
            raise error
        return summary

    # --- the loop ----------------------------------------------------------------------------------------------

    def _loop(self, signals: StopSignals) -> Any:
        """Optimiser steps until the end or a stop signal; returns the signal if one stopped the run."""
        stream = iter(self.batches)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.is_main and self.config.progress_bar))
        interval = Interval(self.dist.device)
        self.wrapped.train()
        try:
            while self.step < self.total_steps:
                set_lr(self.optimizer, self._lr_at(self.step))
                window = [self._next_batch(stream) for _ in range(self.config.grad_accum_steps)]
                # Every label token of the step, over all micro-batches and ranks, weighs the same.
                label_tokens = all_reduce(torch.tensor(float(sum(b.num_label_tokens for b in window)),
                                                       device=self.dist.device)).item()
                normaliser = max(label_tokens, 1.0) / self.dist.world_size  # DDP/FSDP average over ranks
                window_loss = torch.zeros((), device=self.dist.device)
                for i, batch in enumerate(window):
                    with gradient_sync(self.wrapped, enabled=i == len(window) - 1), self._autocast():
                        loss = self.wrapped(**batch.to(self.dist.device).inputs, num_items_in_batch=normaliser).loss
                    self.scaler.scale(loss).backward()
                    window_loss += loss.detach().float()
                    interval.add(batch)
                    self.totals.add(batch)
                grad_norm, step_loss, updated = self._optimizer_step(window_loss)
                self.step += 1
                bar.update(1)
                interval.add_step(step_loss, updated)
                if updated:
                    self.totals.updated()
                else:
                    self._skipped(window, step_loss, grad_norm)
                stop = self._after_step(interval, grad_norm, bar, signals)
                if stop is not None:
                    return stop
            return None
        finally:
            bar.close()
            stream.close()

    def _optimizer_step(self, loss: torch.Tensor) -> tuple[float, float, bool]:
        """Unscale, clip and update; returns (gradient norm, the step's loss over all ranks, updated).

        A step whose loss or gradient norm is not finite on any rank changes neither the weights nor the optimizer
        state (under fp16 the GradScaler lowers its scale, as it would have). Deciding that before the update costs
        one host sync per step."""
        self.scaler.unscale_(self.optimizer)
        clip = self.config.clip_grad if self.config.clip_grad is not None else math.inf
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.trainable, clip)).to(self.dist.device)
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        loss_sum, bad_ranks = all_reduce(torch.stack([loss.float(), (~finite).float()])).tolist()
        updated = bad_ranks == 0
        if updated:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm), loss_sum / self.dist.world_size, updated

    def _skipped(self, window: list[Batch], loss: float, grad_norm: float) -> None:
        """Log a skipped step with every rank's samples in it; too many in a row end the run."""
        samples = sorted(i for indices in gather_objects([i for b in window for i in b.indices]) for i in indices)
        in_a_row = self.totals.skip(self.step, samples)
        self.metrics.log("skipped", self.step, {"loss": json_number(loss), "grad_norm": json_number(grad_norm),
                                                "samples": samples, "in_a_row": in_a_row})
        say(self.dist, f"step {self.step}: skipped (loss {loss:.4g}, gradient norm {grad_norm:.4g}); training samples "
                       f"{format_ids(samples)}")
        limit = self.config.max_consecutive_skipped_steps
        if in_a_row > limit:
            raise NonFiniteStepsError(
                f"{in_a_row} optimizer steps in a row ({self.step - in_a_row + 1}-{self.step}) had a non-finite loss "
                f"or gradient norm, more than train.max_consecutive_skipped_steps={limit}; training samples of the "
                f"last one: {format_ids(samples)} (all: metrics.jsonl); the last checkpoint is {self.last_checkpoint}. "
                "Check those samples, lower the learning rate, or train in bf16/fp32."
            )

    def _after_step(self, interval: Interval, grad_norm: float, bar: tqdm, signals: StopSignals) -> Any:
        """Log, call back, validate, save; returns the stop signal all ranks agreed on, if any."""
        config, final = self.config, self.step == self.total_steps
        record = {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
        if self.step % config.log_every_steps == 0 or final:
            record.update(self._train_record(interval, grad_norm))
            bar.set_postfix(**progress_postfix(record))
        for callback in self.callbacks:
            callback(self, record)
        if self.val_dataset is not None and (self.step % config.eval_every_steps == 0 or final):
            self._validate()
        stop = signals.agreed()
        if stop is not None:
            say(self.dist, f"received {stop.name}: saving a checkpoint at step {self.step} and stopping "
                           "(Ctrl-C again aborts without saving)")
        if self.step % config.save_every_steps == 0 or final or stop is not None:
            self._save(ckpt.step_dir(self.output_dir, self.step), update_latest=True)
            self.last_checkpoint = ckpt.step_dir(self.output_dir, self.step)
        return stop

    def _train_record(self, interval: Interval, grad_norm: float) -> dict[str, Any]:
        """The `train` record of the interval that ends at this step (a collective), logged."""
        measured = interval.measure()
        values = {
            "loss": measured["loss"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": json_number(grad_norm),
            "skipped_steps": measured["skipped_steps"],
            "epoch": self._epoch(),
            "tokens_per_s": measured["tokens_per_s"],
            "samples_per_s": measured["samples_per_s"],
        }
        if self.scaler.is_enabled():
            values["loss_scale"] = float(self.scaler.get_scale())
        self.metrics.log("train", self.step, values)
        return values

    def _epoch(self) -> float:
        """Epochs done, fractional."""
        return self.batches.epoch + self.batches.consumed / max(len(self.batches.sampler), 1)

    def _summary(self, interrupted: str | None) -> dict[str, Any]:
        """The run summary (summary.json): length, throughput, peak memory, checkpoints, totals over every session;
        a collective, like everything that counts over ranks."""
        memory, memory_kind = peak_memory(self.dist.device)
        memory = int(all_reduce(torch.tensor([float(memory)], device=self.dist.device), op="max").item())
        totals = self.totals.snapshot()
        session_tokens, _, _ = self.totals.session_totals()
        wall = time.perf_counter() - self.totals.session_start
        best_dir = self.output_dir / ckpt.CHECKPOINTS / ckpt.BEST
        return {
            "steps": self.step,
            "total_steps": self.total_steps,
            "epoch": self._epoch(),
            "wall_time_s": wall,
            "train_time_s_total": totals["train_time_s"],
            "tokens": totals["tokens_seen"],
            "samples": totals["samples_seen"],
            "tokens_per_s": session_tokens / wall if wall > 0 else 0.0,
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
            "best_checkpoint": str(best_dir) if totals["best_step"] is not None else None,
            "best_step": totals["best_step"],
            "best_val_loss": totals["best_val_loss"],
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "adapter_fingerprint": self.adapter_fingerprint,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "interrupted": interrupted,
            "world_size": self.dist.world_size,
            "effective_batch": self.config.effective_batch(self.dist.world_size),
            "lr": self.lr,
            "data": totals["data"],
            "skipped_steps": totals["skipped_steps"],
        }

    def _next_batch(self, stream: Any) -> Batch:
        """The next batch to train on; its data counts are added up, and a batch whose items were all skipped
        (bad images under on_bad_image='skip') is only counted."""
        while True:
            batch = next(stream)
            self.totals.add_stats(batch.stats)
            if batch.inputs:
                return batch

    def _lr_at(self, step: int) -> float:
        return lr_at(step, base_lr=self.lr, min_lr=self.config.min_lr, warmup_steps=self.warmup_steps,
                     total_steps=self.schedule_steps)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    # --- validation --------------------------------------------------------------------------------------------

    def _validate(self) -> None:
        """Validation loss over all ranks, a few samples, and `best/` when the loss improves; under a forked RNG, so
        evaluating (or not, or at another cadence) never changes the training run."""
        model = unwrap(self.wrapped)
        model.eval()
        samples = None
        with preserved_rng():
            val_loss = validation_loss(
                self.wrapped, self.val_dataset, self.val_collate_fn,
                batch_size=self.config.eval_batch_size or self.config.batch_size,
                max_batches=self.config.eval_max_batches, num_workers=self.config.num_workers, dist=self.dist,
                autocast=self._autocast,
            )
            if self.sample_fn is not None and (self.is_main or is_fsdp(self.wrapped)):
                with torch.no_grad(), self._autocast():
                    samples = list(self.sample_fn(model))
        model.train()
        self.metrics.log("val", self.step, {"loss": val_loss})
        message = f"step {self.step}: val loss {val_loss:.4f}"
        if self.totals.improves(val_loss, self.step):
            self._save(self.output_dir / ckpt.CHECKPOINTS / ckpt.BEST, update_latest=False)
            message += " (best so far)"
        say(self.dist, message)
        if samples is not None and self.is_main:
            self.metrics.log_text("samples", self.step, samples)
            for sample in samples[:3]:
                say(self.dist, f"  sample: {sample}")

    # --- checkpoints and resume --------------------------------------------------------------------------------

    def _save(self, directory: Path, *, update_latest: bool) -> None:
        """Gather (a collective under FSDP), then rank 0 writes; every rank waits for the write to finish, and a
        failed write (a full disk) ends the run on every rank with CheckpointWriteError."""
        adapter = trainable_state(self.wrapped)
        self.adapter_fingerprint = state_fingerprint(adapter)
        optimizer = optimizer_state(self.wrapped, self.optimizer)
        counters = self.totals.snapshot()
        position = self.batches.position()
        per_rank = gather_objects({"position": position, "rng": capture_rng()})
        if self.is_main:
            if len({(p["position"]["epoch"], p["position"]["consumed"]) for p in per_rank}) != 1:
                raise RuntimeError(f"ranks disagree on the data position: {[p['position'] for p in per_rank]}")
            state = ResumeState(
                step=self.step, epoch=position["epoch"], consumed_in_epoch=position["consumed"],
                sampler_states=[p["position"]["sampler_state"] for p in per_rank],
                rng_states=[p["rng"] for p in per_rank], optimizer=optimizer,
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                world_size=self.dist.world_size, run_config=self.run_config, model=self.adapter,
                data=self.data_identity, counters=counters,
                schedule={"kind": "linear_warmup_half_cosine", "base_lr": self.lr, "min_lr": self.config.min_lr,
                          "warmup_steps": self.warmup_steps, "total_steps": self.schedule_steps},
            )
            failure = ckpt.write_checkpoint_or_report(directory, adapter, self.adapter, state,
                                                      update_latest=update_latest, keep_last=self.config.keep_last)
        failure = broadcast_object(failure if self.is_main else None)
        if failure is not None:
            raise ckpt.CheckpointWriteError(failure)

    def _prepare(self, resume: str | Path | bool | None) -> ResumeState | None:
        """Find the checkpoint to resume from (rank 0 reads the file system, every rank follows), check that it
        continues this run's trajectory, load its adapter."""
        decision: tuple[str, str | None] = ("ok", None)
        if self.is_main:
            try:
                for leftover in ckpt.clean_scratch(self.output_dir):
                    say(self.dist, f"removed {leftover.name}, left by an interrupted checkpoint write")
                found = find_checkpoint(self.output_dir, resume, warn=lambda line: say(self.dist, line))
                if found is None and resume not in (None, False, ""):
                    say(self.dist, f"no checkpoint in {self.output_dir / ckpt.CHECKPOINTS}: starting from scratch")
                decision = ("ok", str(found) if found is not None else None)
            except (OSError, ValueError) as error:
                if not self.dist.distributed:
                    raise
                decision = ("error", f"{type(error).__name__}: {error}")
        kind, value = broadcast_object(decision)
        if kind == "error":
            raise ValueError(f"rank 0 could not resolve the checkpoint to resume from: {value}")
        if value is None:
            return None
        path = Path(value)
        state = read_resume_state(path)
        check = check_resume(state, run_config=self.run_config, model=self.adapter, data=self.data_identity,
                             world_size=self.dist.world_size, free_keys=self.free_keys)
        if check.refused:
            raise ResumeMismatchError(
                f"cannot resume from {path}: it was written by a run on another trajectory:"
                + "".join(f"\n  {line}" for line in check.refused)
                + "\nStart a new run in another train.output_dir to change these."
            )
        (self.schedule_steps, self.warmup_steps), schedule = resumed_schedule(
            state.schedule, (self.total_steps, self.warmup_steps), self.config.resume_schedule, step=state.step,
            min_lr=self.config.min_lr)
        if check.allowed or schedule:
            say(self.dist, f"resuming from {path} with changed settings:"
                + "".join(f"\n  {line}" for line in [*check.allowed, *([schedule] if schedule else [])]))
        load_adapter(self.model, path)
        self.resumed_from = self.last_checkpoint = path
        self.adapter_fingerprint = state_fingerprint(trainable_state_dict(self.model))
        return state

    def _restore(self, state: ResumeState) -> None:
        load_optimizer_state(self.wrapped, self.optimizer, state.optimizer)
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        self.step = state.step
        self.totals.restore(state.counters)
        self.batches.seek(state.epoch, state.consumed_in_epoch, state.sampler_states[self.dist.rank])
        restore_rng(state.rng_states[self.dist.rank])
        say(self.dist, f"resumed from {self.resumed_from} at step {self.step}/{self.total_steps} (epoch {state.epoch})")

    def _run_description(self) -> dict[str, Any]:
        return {
            "run_config": self.run_config,
            "world_size": self.dist.world_size,
            "effective_batch": self.config.effective_batch(self.dist.world_size),
            "lr": self.lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "schedule_steps": self.schedule_steps,
            "micro_batches_per_epoch": self.batches.per_epoch(),
            "model": self.adapter,
            "data": self.data_identity,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
        }
