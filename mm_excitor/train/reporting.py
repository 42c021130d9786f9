"""What a run reports: per-interval training records, run totals carried across resumes, and summary.json."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..io import atomic_write_json
from . import checkpoints as ckpt
from .batches import Batch
from .distributed import DistInfo, all_reduce, gather_objects
from .metrics import human_bytes, peak_memory, say

if TYPE_CHECKING:
    from .trainer import Trainer

SUMMARY_FILE = "summary.json"


class Interval:
    """Loss, tokens and items since the last training record (kept on the device: no host sync per step)."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.device = device
        self.reset(step)

    def reset(self, step: int) -> None:
        """Start counting after optimiser step `step`."""
        self.start_step = step
        self.loss = torch.zeros((), device=self.device)
        self.tokens = self.items = self.steps = 0
        self.start = time.perf_counter()

    def add(self, batch: Batch, loss: torch.Tensor) -> None:
        self.loss += loss.detach().float()
        self.tokens += batch.num_tokens
        self.items += batch.num_items

    def report(self, trainer: Trainer, grad_norm: float, bar: tqdm) -> dict[str, Any]:
        """One `train` record over all ranks (a collective), logged, then the interval starts again.

        Each micro-batch's loss is its summed token loss over the step's label tokens per rank, so summing over
        micro-batches and ranks and dividing by world size and steps gives the token mean per step."""
        steps = max(trainer.step - self.start_step, 1)
        dist = trainer.dist
        totals = torch.stack([self.loss.double(), torch.tensor(float(self.tokens), device=self.device, dtype=torch.float64),
                              torch.tensor(float(self.items), device=self.device, dtype=torch.float64)])
        loss_sum, tokens, items = all_reduce(totals).tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        loss = loss_sum / (dist.world_size * steps)
        if not torch.isfinite(torch.tensor(loss)):
            raise FloatingPointError(
                f"training loss is {loss} at step {trainer.step}; the last good checkpoint is "
                f"{trainer.last_checkpoint}. Lower the learning rate or use precision='bf16'/'fp32'."
            )
        batches = trainer.batches
        values = {
            "loss": loss,
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "epoch": batches.epoch + batches.consumed / max(len(batches.sampler), 1),
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": items / elapsed,
        }
        if trainer.scaler.is_enabled():
            values["loss_scale"] = float(trainer.scaler.get_scale())
        trainer.metrics.log("train", trainer.step, values)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{values['lr']:.2e}", tok_s=f"{values['tokens_per_s']:.0f}")
        self.reset(trainer.step)
        return values


class RunTotals:
    """Items, tokens, training time, the best validation loss and the data counts (truncations, skipped items),
    over all ranks and over every session of a resumed run."""

    def __init__(self, dist: DistInfo) -> None:
        self.dist = dist
        self.saved: dict[str, Any] = {"samples_seen": 0, "tokens_seen": 0, "train_time_s": 0.0,
                                      "best_val_loss": None, "best_step": None, "data": {}}
        self.session_tokens = self.session_items = 0
        self.session_data: dict[str, int] = {}
        self.session_start = time.perf_counter()

    def add(self, batch: Batch) -> None:
        self.session_tokens += batch.num_tokens
        self.session_items += batch.num_items

    def add_stats(self, stats: dict[str, int]) -> None:
        for key, value in stats.items():
            self.session_data[key] = self.session_data.get(key, 0) + int(value)

    def improves(self, val_loss: float, step: int) -> bool:
        best = self.saved["best_val_loss"]
        if best is None or val_loss < best:
            self.saved["best_val_loss"], self.saved["best_step"] = val_loss, step
            return True
        return False

    def restore(self, counters: dict[str, Any]) -> None:
        self.saved.update(counters)

    def session_totals(self) -> tuple[int, int, dict[str, int]]:
        """This session's tokens, items and data counts summed over ranks (a collective)."""
        tokens, items = all_reduce(torch.tensor([float(self.session_tokens), float(self.session_items)],
                                                dtype=torch.float64, device=self.dist.device)).tolist()
        data: dict[str, int] = {}
        for counts in gather_objects(self.session_data):
            for key, value in counts.items():
                data[key] = data.get(key, 0) + value
        return int(tokens), int(items), data

    def snapshot(self) -> dict[str, Any]:
        """Run totals as of now (a collective: call on every rank)."""
        tokens, items, data = self.session_totals()
        merged = dict(self.saved.get("data", {}))
        for key, value in data.items():
            merged[key] = merged.get(key, 0) + value
        return dict(self.saved, tokens_seen=self.saved["tokens_seen"] + tokens,
                    samples_seen=self.saved["samples_seen"] + items,
                    train_time_s=self.saved["train_time_s"] + time.perf_counter() - self.session_start, data=merged)


def write_summary(trainer: Trainer, interrupted: str | None) -> dict[str, Any]:
    """summary.json (rank 0) and the closing message; a collective, like everything that counts over ranks."""
    dist, config = trainer.dist, trainer.config
    memory, memory_kind = peak_memory(dist.device)
    memory = int(all_reduce(torch.tensor([float(memory)], device=dist.device), op="max").item())
    totals = trainer.totals.snapshot()
    session_tokens, _, _ = trainer.totals.session_totals()
    wall = time.perf_counter() - trainer.totals.session_start
    batches = trainer.batches
    best_dir = trainer.output_dir / ckpt.CHECKPOINTS / ckpt.BEST
    summary = {
        "steps": trainer.step,
        "total_steps": trainer.total_steps,
        "epoch": batches.epoch + batches.consumed / max(len(batches.sampler), 1),
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
        "last_checkpoint": str(trainer.last_checkpoint) if trainer.last_checkpoint else None,
        "adapter_fingerprint": trainer.adapter_fingerprint,
        "resumed_from": str(trainer.resumed_from) if trainer.resumed_from else None,
        "interrupted": interrupted,
        "world_size": dist.world_size,
        "effective_batch": config.effective_batch(dist.world_size),
        "lr": trainer.lr,
        "data": totals["data"],
    }
    if dist.is_main:
        atomic_write_json(trainer.output_dir / SUMMARY_FILE, summary)
        best = (f"{summary['best_checkpoint']} (step {summary['best_step']}, val loss {summary['best_val_loss']:.4f})"
                if summary["best_checkpoint"] else "none (no validation set)")
        say(dist, f"{'stopped' if interrupted else 'done'}: {trainer.step}/{trainer.total_steps} steps in {wall:.1f}s, "
                  f"{summary['tokens_per_s']:.0f} tokens/s, peak memory {human_bytes(memory)} ({memory_kind}); "
                  f"best checkpoint: {best}; last: {summary['last_checkpoint']}")
        data = summary["data"]
        if data.get("truncated") or data.get("skipped"):
            say(dist, f"data: {data.get('truncated', 0)} of {data.get('examples', 0)} examples truncated "
                      f"({data.get('prompt_tokens_cut', 0)} prompt / {data.get('target_tokens_cut', 0)} answer tokens "
                      f"cut), {data.get('skipped', 0)} items skipped"
                      + (f" ({data['too_long']} conversations whose first answer does not fit; "
                         f"{data['turns_dropped']} trailing turns dropped)" if "turns_dropped" in data else ""))
    return summary
