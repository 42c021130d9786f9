"""The training loop: one engine behind train_caption.py and train_scienceqa.py.

The model is any module with Excitor blocks (`model.excitor_config`) that takes a collated batch as keyword
arguments and returns an object with `.loss` (labels are in the batch). Data arrive by injection: a dataset, a
collate function and a resumable sampler built by the caller, so this package never imports `data`.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoint import ADAPTER_CONFIG_NAME, load_adapter, model_identity
from ..io import atomic_write_json
from . import checkpoints as ckpt
from .batches import MicroBatches, ResumableSamplerProtocol
from .config import RESUME_MUTABLE_KEYS, TrainConfig
from .distributed import (
    DistInfo,
    all_reduce,
    barrier,
    broadcast_object,
    full_tensor,
    gather_objects,
    gradient_sync,
    init_distributed,
    is_fsdp,
    load_optimizer_state,
    optimizer_state,
    trainable_state,
    unwrap,
    wrap_model,
)
from .metrics import MetricsLogger, human_bytes, peak_memory
from .optim import build_optimizer, lr_at, set_lr
from .state import ResumeState, capture_rng, preserved_rng, read_resume_state, restore_rng, seed_everything

SUMMARY_FILE = "summary.json"
RUN_FILE = "train_config.json"
StepCallback = Callable[["Trainer", dict[str, Any]], None]
SampleFn = Callable[[nn.Module], Sequence[Any]]


class TrainingInterrupted(SystemExit):
    """SIGTERM/SIGINT stopped the run after a checkpoint was written; exit status 128 + signal number."""

    def __init__(self, signal_name: str, signum: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(128 + signum)
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint

    def __str__(self) -> str:
        return f"stopped by {self.signal_name} after step {self.step}; checkpoint {self.checkpoint}"


class ResumeMismatchError(ValueError):
    """The checkpoint was written by a run with another config, world size or base model."""


class Trainer:
    """Fit the trainable (requires_grad) tensors of `model` on `train_dataset`; see README.md for the recipe.

    `sampler` yields this rank's dataset indices (see batches.ResumableSamplerProtocol). `sample_fn(model)`, if
    given, returns a few generations (strings or JSON-able dicts) to log at each evaluation; it receives the
    unwrapped model in eval mode under no_grad. `callbacks` are called after every optimiser step with the trainer
    and that step's record. `run_config`, if given (the entry script's whole config as plain data), is stored in
    checkpoints and must match on resume like the TrainConfig.
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any],
        sampler: ResumableSamplerProtocol,
        config: TrainConfig,
        val_dataset: Dataset | None = None,
        val_collate_fn: Callable[[list[Any]], Any] | None = None,
        sample_fn: SampleFn | None = None,
        *,
        callbacks: Sequence[StepCallback] = (),
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.dist: DistInfo = init_distributed(config.device)
        if config.precision == "fp16" and config.distributed == "fsdp" and self.dist.distributed:
            raise ValueError("precision='fp16' is not supported with FSDP (the GradScaler would not see other ranks' "
                             "overflows); use 'bf16'")
        self.excitor_config = getattr(model, "excitor_config", None)
        if self.excitor_config is None:
            raise ValueError("the model has no Excitor blocks (call mm_excitor.apply_excitor first)")
        self.model = model
        self.identity = model_identity(model)  # before sharding: the fingerprint reads frozen weights
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad and parameter.dtype != torch.float32:
                    parameter.data = parameter.data.float()  # trainable tensors stay fp32 under autocast
        if val_dataset is not None and len(val_dataset) == 0:
            raise ValueError("val_dataset is empty; pass None to train without validation")
        self.val_dataset, self.val_collate_fn = val_dataset, val_collate_fn or collate_fn
        self.sample_fn, self.callbacks = sample_fn, list(callbacks)
        self.run_config = dict(run_config) if run_config is not None else None
        self.output_dir = Path(config.output_dir)
        self.batches = MicroBatches(
            train_dataset,
            sampler,
            collate_fn,
            config.batch_size,
            drop_last=config.drop_last,
            num_workers=config.num_workers,
            seed=config.seed,
            rank=self.dist.rank,
            pin_memory=self.dist.device.type == "cuda",
        )
        self.total_steps, self.warmup_steps = config.schedule_lengths(self.batches.per_epoch())
        self.lr = config.learning_rate(self.dist.world_size)
        self.step = 0
        # run totals as of the checkpoint this session resumed from (zeros for a fresh run); see _totals()
        self.counters: dict[str, Any] = {
            "samples_seen": 0, "tokens_seen": 0, "train_time_s": 0.0, "best_val_loss": None, "best_step": None,
            "data": {},  # this rank's sums of the collate function's `stats` (truncations, skipped items)
        }
        # this rank, this session: tokens, samples (kept on the device: no host sync per micro-step)
        self._session_counts = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
        self._session_start = time.perf_counter()
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self._stop_signal: int | None = None
        self._fitted = False

    # --- public ----------------------------------------------------------------------------------------------

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
        self._session_start = time.perf_counter()
        state = self._prepare(self.config.resume if resume is None else resume)
        self.wrapped = wrap_model(self.model, self.config.distributed, self.dist, self.config.find_unused_parameters)
        self.optimizer = build_optimizer(unwrap(self.wrapped), self.config, self.lr)
        self.trainable = [p for p in unwrap(self.wrapped).parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=self.config.precision == "fp16")
        if state is not None:
            self._restore(state)
        else:
            seed_everything(self.config.seed + self.dist.rank)
        self.metrics = MetricsLogger(
            self.output_dir,
            enabled=self.is_main,
            tensorboard=self.config.tensorboard,
            resume_step=self.step if state is not None else None,
        )
        if self.is_main:
            atomic_write_json(self.output_dir / RUN_FILE, self._run_description())
        interrupted: str | None = None
        previous_handlers = self._install_signal_handlers()
        try:
            interrupted = self._loop()
        finally:
            self._restore_signal_handlers(previous_handlers)
            self.metrics.close()
        summary = self._summary(interrupted)
        if interrupted is not None:
            signum = getattr(signal, interrupted)
            error = TrainingInterrupted(interrupted, signum, self.step, self.last_checkpoint)
            self._say(f"{error}; continue with resume='latest' (e.g. --train.resume latest)")
            raise error
        return summary

    # --- setup and resume --------------------------------------------------------------------------------------

    def _prepare(self, resume: str | Path | bool | None) -> ResumeState | None:
        """Find the checkpoint to resume from (rank 0 decides), check it fits this run, load the adapter."""
        decision: tuple[str, str | None] = ("ok", None)
        if self.is_main:
            try:
                for leftover in ckpt.clean_scratch(self.output_dir):
                    self._say(f"removed {leftover.name}, left by an interrupted checkpoint write")
                found = self._resolve_resume(resume)
                decision = ("ok", str(found) if found is not None else None)
            except (OSError, ValueError) as error:
                decision = ("error", f"{type(error).__name__}: {error}")
                if not self.dist.distributed:
                    raise
        kind, value = broadcast_object(decision)  # every rank follows rank 0's reading of the file system
        if kind == "error":
            raise RuntimeError(f"rank 0 could not resolve the checkpoint to resume from: {value}")
        if value is None:
            return None
        path = Path(value)
        state = read_resume_state(path)
        differences = self._resume_differences(state, path)
        if differences:
            raise ResumeMismatchError(
                f"cannot resume from {path}: it was written by a different run:\n  " + "\n  ".join(differences)
                + f"\nOnly these keys may change on resume: {', '.join(sorted(RESUME_MUTABLE_KEYS))}. "
                "To change anything else, start a new run in another output_dir."
            )
        load_adapter(self.model, path)
        self.resumed_from = path
        return state

    def _resolve_resume(self, resume: str | Path | bool | None) -> Path | None:
        existing = ckpt.find_latest(self.output_dir)
        if resume in (None, False, ""):
            if existing is not None:
                raise FileExistsError(
                    f"{self.output_dir} already holds checkpoint {existing}; continue that run with resume='latest' "
                    "(--train.resume latest) or choose another output_dir"
                )
            return None
        if resume is True or str(resume) in ("latest", "auto"):
            if existing is None:
                self._say(f"no checkpoint in {self.output_dir / ckpt.CHECKPOINTS}: starting from scratch")
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

    def _resume_differences(self, state: ResumeState, path: Path) -> list[str]:
        out = []
        train_differences = {
            key: values
            for key, values in _diff(_flatten(state.config), _flatten(self.config.to_dict())).items()
            if key not in RESUME_MUTABLE_KEYS
        }
        out += [f"train.{key}: checkpoint {a!r}, this run {b!r}" for key, (a, b) in train_differences.items()]
        if (state.run_config is None) != (self.run_config is None):
            out.append(f"run_config: {'only this run' if state.run_config is None else 'only the checkpoint'} has one")
        for key, (a, b) in _diff(_flatten(state.run_config or {}), _flatten(self.run_config or {})).items():
            if state.run_config is None or self.run_config is None:
                break
            *section, leaf = key.split(".")
            if leaf in RESUME_MUTABLE_KEYS or (section and train_differences.get(leaf) == (a, b)):
                continue  # mutable, or the TrainConfig difference already reported (run_config holds it too)
            out.append(f"{key}: checkpoint {a!r}, this run {b!r}")
        if state.world_size != self.dist.world_size:
            out.append(
                f"world_size: checkpoint {state.world_size}, this run {self.dist.world_size} (the effective batch, "
                "learning rate and data shards depend on it)"
            )
        for key, (a, b) in _diff(_flatten(state.identity), _flatten(self.identity)).items():
            leaf = key.rsplit(".", 1)[-1]
            if leaf == "name_or_path" or (leaf == "weights_fingerprint" and (a is None or b is None)):
                continue
            out.append(f"model.{key}: checkpoint {a!r}, this model {b!r}")
        adapter_config = _read_json(path / ADAPTER_CONFIG_NAME).get("excitor", {})
        for key, (a, b) in _diff(adapter_config, self.excitor_config.to_dict()).items():
            out.append(f"excitor.{key}: checkpoint {a!r}, this model {b!r}")
        return out

    def _restore(self, state: ResumeState) -> None:
        load_optimizer_state(self.wrapped, self.optimizer, state.optimizer)
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        self.step = state.step
        self.counters.update(state.counters)
        self.batches.seek(state.epoch, state.consumed_in_epoch, state.sampler_states[self.dist.rank])
        restore_rng(state.rng_states[self.dist.rank])
        self._say(f"resumed from {self.resumed_from} at step {self.step}/{self.total_steps} (epoch {state.epoch})")

    def _run_description(self) -> dict[str, Any]:
        return {
            "train": self.config.to_dict(),
            "run_config": self.run_config,
            "world_size": self.dist.world_size,
            "effective_batch": self.config.effective_batch(self.dist.world_size),
            "lr": self.lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "micro_batches_per_epoch": self.batches.per_epoch(),
            "excitor": self.excitor_config.to_dict(),
            "identity": self.identity,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
        }

    # --- the loop ----------------------------------------------------------------------------------------------

    def _loop(self) -> str | None:
        """Optimiser steps until the end or a stop signal; returns the signal's name if one stopped the run."""
        config = self.config
        accum = config.grad_accum_steps
        stream = iter(self.batches)
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
            disable=not (self.is_main and config.progress_bar),
        )
        interval = self._new_interval()
        self.wrapped.train()
        try:
            while self.step < self.total_steps:
                set_lr(self.optimizer, self._lr_at(self.step))
                for micro in range(accum):
                    batch, n_items = self._next_batch(stream)
                    inputs = self._to_device(batch)
                    tokens = _count_tokens(inputs)
                    interval["tokens"] += tokens
                    interval["samples"] += n_items
                    self._session_counts[0] += tokens
                    self._session_counts[1] += n_items
                    with gradient_sync(self.wrapped, enabled=micro == accum - 1):
                        with self._autocast():
                            loss = self.wrapped(**inputs).loss
                        self.scaler.scale(loss / accum).backward()
                    interval["loss"] += loss.detach().float()
                    interval["micro"] += 1
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    self.trainable, config.clip_grad if config.clip_grad is not None else math.inf
                )
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                bar.update(1)
                record = {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
                final = self.step == self.total_steps
                if self.step % config.log_every_steps == 0 or final:
                    record.update(self._log_interval(interval, grad_norm, bar))
                    interval = self._new_interval()
                for callback in self.callbacks:
                    callback(self, record)
                if self.val_dataset is not None and (self.step % config.eval_every_steps == 0 or final):
                    self._evaluate()
                stop = self._agreed_stop()
                if self.step % config.save_every_steps == 0 or final or stop is not None:
                    self._save_step()
                if stop is not None:
                    return stop
            return None
        finally:
            bar.close()
            stream.close()

    def _next_batch(self, stream: Any) -> tuple[Mapping[str, Any], int]:
        """The next batch to train on; its `stats` are added up, and a batch whose items were all skipped (bad
        images under on_bad_image='skip') is only counted."""
        while True:
            batch, n_items = next(stream)
            data = self.counters.setdefault("data", {})
            for key, value in batch.get("stats", {}).items():
                data[key] = data.get(key, 0) + int(value)
            if "input_ids" in batch:
                return batch, n_items

    def _lr_at(self, step: int) -> float:
        return lr_at(step, base_lr=self.lr, min_lr=self.config.min_lr, warmup_steps=self.warmup_steps,
                     total_steps=self.total_steps)

    def _new_interval(self) -> dict[str, Any]:
        zero = torch.zeros((), device=self.dist.device)
        return {"loss": zero.clone(), "micro": 0, "tokens": zero.clone(), "samples": 0, "start": time.perf_counter()}

    def _log_interval(self, interval: dict[str, Any], grad_norm: torch.Tensor, bar: tqdm) -> dict[str, Any]:
        totals = torch.stack([
            interval["loss"].float(), torch.tensor(float(interval["micro"]), device=self.dist.device),
            interval["tokens"].float(), torch.tensor(float(interval["samples"]), device=self.dist.device),
        ])
        loss_sum, micro, tokens, samples = all_reduce(totals).tolist()
        elapsed = max(time.perf_counter() - interval["start"], 1e-9)
        loss = loss_sum / max(micro, 1)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at step {self.step}; the last good checkpoint is {self.last_checkpoint}. "
                "Lower blr or use precision='bf16'/'fp32'."
            )
        values = {
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": float(full_tensor(grad_norm)),
            "epoch": self.batches.epoch + self.batches.consumed / max(len(self.batches.sampler), 1),
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": samples / elapsed,
        }
        if self.scaler.is_enabled():
            values["loss_scale"] = float(self.scaler.get_scale())
        self.metrics.log("train", self.step, values)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{values['lr']:.2e}", tok_s=f"{values['tokens_per_s']:.0f}")
        return values

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        device = self.dist.device
        return {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
            if k not in ("meta", "stats")  # bookkeeping from data.collate, not model inputs
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    # --- evaluation --------------------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        """Validation loss over all ranks, a few samples, and `best/` when the loss improves.

        Runs under a forked RNG, so evaluating (or not, or at another cadence) never changes the training run.
        """
        model = unwrap(self.wrapped)
        model.eval()
        samples = None
        with preserved_rng(), torch.no_grad():
            val_loss = self._validation_loss(model)
            if self.sample_fn is not None and (self.is_main or is_fsdp(self.wrapped)):
                with self._autocast():
                    samples = list(self.sample_fn(model))
        model.train()
        self.metrics.log("val", self.step, {"loss": val_loss})
        message = f"step {self.step}: val loss {val_loss:.4f}"
        best = self.counters["best_val_loss"]
        if best is None or val_loss < best:
            self.counters["best_val_loss"], self.counters["best_step"] = val_loss, self.step
            self._save(self.output_dir / ckpt.CHECKPOINTS / ckpt.BEST, update_latest=False)
            message += " (best so far)"
        self._say(message)
        if samples is not None and self.is_main:
            self.metrics.log_text("samples", self.step, samples)
            for sample in samples[:3]:
                self._say(f"  sample: {sample}")

    def _validation_loss(self, model: nn.Module) -> float:
        """Label-token-weighted mean loss; batch j goes to rank j % world_size, and every rank runs the same
        number of forwards (padding with weight-0 repeats) because FSDP forwards are collectives."""
        size = self.config.eval_batch_size or self.config.batch_size
        indices = list(range(len(self.val_dataset)))
        batches = [indices[i : i + size] for i in range(0, len(indices), size)]
        if self.config.eval_max_batches is not None:
            batches = batches[: self.config.eval_max_batches]
        world, rank = self.dist.world_size, self.dist.rank
        mine = batches[rank::world]
        per_rank = -(-len(batches) // world)
        weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
        mine = mine + [batches[0]] * (per_rank - len(mine))
        loader = DataLoader(self.val_dataset, batch_sampler=mine, collate_fn=self.val_collate_fn,
                            num_workers=self.config.num_workers, generator=torch.Generator().manual_seed(0))
        totals = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
        for weight, batch in zip(weights, loader):
            inputs = self._to_device(batch)
            with self._autocast():
                loss = model(**inputs).loss.double()
            labels = inputs.get("labels")
            count = (labels[..., 1:] != -100).sum().double() if labels is not None else torch.tensor(1.0)
            totals += weight * torch.stack([loss * count, count.to(totals.device)])
        loss_sum, count = all_reduce(totals).tolist()
        return loss_sum / count if count else float("nan")

    # --- checkpoints -------------------------------------------------------------------------------------------

    def _save_step(self) -> None:
        directory = ckpt.step_dir(self.output_dir, self.step)
        self._save(directory, update_latest=True)
        self.last_checkpoint = directory

    def _save(self, directory: Path, *, update_latest: bool) -> None:
        """Gather (a collective under FSDP), then rank 0 writes; every rank waits for the write to finish."""
        adapter = trainable_state(self.wrapped)
        optimizer = optimizer_state(self.wrapped, self.optimizer)
        totals = self._totals()
        position = self.batches.position()
        per_rank = gather_objects({"position": position, "rng": capture_rng()})
        if self.is_main:
            if len({(p["position"]["epoch"], p["position"]["consumed"]) for p in per_rank}) != 1:
                raise RuntimeError(f"ranks disagree on the data position: {[p['position'] for p in per_rank]}")
            state = ResumeState(
                step=self.step,
                epoch=position["epoch"],
                consumed_in_epoch=position["consumed"],
                sampler_states=[p["position"]["sampler_state"] for p in per_rank],
                rng_states=[p["rng"] for p in per_rank],
                optimizer=optimizer,
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                world_size=self.dist.world_size,
                config=self.config.to_dict(),
                run_config=self.run_config,
                identity=self.identity,
                counters=totals,
                schedule={"kind": "linear_warmup_half_cosine", "base_lr": self.lr, "min_lr": self.config.min_lr,
                          "warmup_steps": self.warmup_steps, "total_steps": self.total_steps},
            )
            ckpt.write_checkpoint(directory, adapter, self.excitor_config, self.identity, state)
            if update_latest:
                ckpt.set_latest(self.output_dir, directory)
                ckpt.prune(self.output_dir, self.config.keep_last, protect=directory)
        barrier()

    # --- signals -----------------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum: int, _frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
            self._stop_signal = signum  # acted on (and reported) at the end of the current optimiser step

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _agreed_stop(self) -> str | None:
        """The signal name if any rank was asked to stop; every rank agrees, so all save and stop together."""
        local = float(self._stop_signal or 0)
        if self.dist.distributed:
            flag = all_reduce(torch.tensor([local], device=self.dist.device), op="max")
            local = flag.item()
        if not local:
            return None
        name = signal.Signals(int(local)).name
        self._say(f"received {name}: saving a checkpoint at step {self.step} and stopping (Ctrl-C again aborts "
                  "without saving)")
        return name

    # --- reporting ---------------------------------------------------------------------------------------------

    def _totals(self) -> dict[str, Any]:
        """Run totals over all ranks and sessions (a collective: call on every rank)."""
        tokens, samples = all_reduce(self._session_counts.clone()).tolist()
        return dict(
            self.counters,
            tokens_seen=self.counters["tokens_seen"] + int(tokens),
            samples_seen=self.counters["samples_seen"] + int(samples),
            train_time_s=self.counters["train_time_s"] + time.perf_counter() - self._session_start,
        )

    def _summary(self, interrupted: str | None) -> dict[str, Any]:
        memory, memory_kind = peak_memory(self.dist.device)
        memory = int(all_reduce(torch.tensor([float(memory)], device=self.dist.device), op="max").item())
        totals = self._totals()
        session_tokens = int(all_reduce(self._session_counts[:1].clone()).item())
        wall = time.perf_counter() - self._session_start
        best_dir = self.output_dir / ckpt.CHECKPOINTS / ckpt.BEST
        summary = {
            "steps": self.step,
            "total_steps": self.total_steps,
            "epoch": self.batches.epoch + self.batches.consumed / max(len(self.batches.sampler), 1),
            "wall_time_s": wall,
            "train_time_s_total": totals["train_time_s"],
            "tokens": totals["tokens_seen"],
            "samples": totals["samples_seen"],
            "tokens_per_s": session_tokens / wall if wall > 0 else 0.0,
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
            "best_checkpoint": str(best_dir) if self.counters["best_step"] is not None else None,
            "best_step": self.counters["best_step"],
            "best_val_loss": self.counters["best_val_loss"],
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "interrupted": interrupted,
            "world_size": self.dist.world_size,
            "effective_batch": self.config.effective_batch(self.dist.world_size),
            "lr": self.lr,
            "data": dict(self.counters.get("data", {})),
        }
        if self.is_main:
            atomic_write_json(self.output_dir / SUMMARY_FILE, summary)
            best = (f"{summary['best_checkpoint']} (step {summary['best_step']}, val loss {summary['best_val_loss']:.4f})"
                    if summary["best_checkpoint"] else "none (no validation set)")
            self._say(
                f"{'stopped' if interrupted else 'done'}: {self.step}/{self.total_steps} steps in {wall:.1f}s, "
                f"{summary['tokens_per_s']:.0f} tokens/s, peak memory {human_bytes(memory)} ({memory_kind}); "
                f"best checkpoint: {best}; last: {summary['last_checkpoint']}"
            )
            data = summary["data"]
            if data.get("truncated") or data.get("skipped"):
                self._say(f"data: {data.get('truncated', 0)} of {data.get('examples', 0)} examples truncated "
                          f"({data.get('prompt_tokens_cut', 0)} prompt / {data.get('target_tokens_cut', 0)} answer "
                          f"tokens cut), {data.get('skipped', 0)} items skipped (rank {self.dist.rank})")
        return summary

    def _say(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()


def _count_tokens(inputs: Mapping[str, Any]) -> torch.Tensor:
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return mask.sum()
    ids = inputs.get("input_ids")
    return torch.tensor(ids.numel() if isinstance(ids, torch.Tensor) else 0)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def _diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
