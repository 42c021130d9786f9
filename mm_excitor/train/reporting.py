"""What a run reports: per-interval training records, run totals carried across resumes, and summary.json."""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..cli import format_ids
from ..io import atomic_write_json
from . import checkpoints as ckpt
from .batches import Batch
from .distributed import DistInfo, all_reduce, gather_objects
from .metrics import human_bytes, peak_memory, say

if TYPE_CHECKING:
    from .trainer import Trainer

SUMMARY_FILE = "summary.json"


class Interval:
    """Loss, tokens and items since the last training record; the loss over the steps that updated the weights."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.device = device
        self.reset(step)

    def reset(self, step: int) -> None:
        """Start counting after optimiser step `step`."""
        self.start_step = step
        self.loss = 0.0
        self.tokens = self.items = self.steps = self.skipped = 0
        self.start = time.perf_counter()

    def add(self, batch: Batch) -> None:
        self.tokens += batch.num_tokens
        self.items += batch.num_items

    def add_step(self, loss: float, updated: bool) -> None:
        """One optimiser step's loss (the token mean over all ranks); a skipped step is counted, not averaged."""
        if updated:
            self.loss += loss
            self.steps += 1
        else:
            self.skipped += 1

    def report(self, trainer: Trainer, grad_norm: float, bar: tqdm) -> dict[str, Any]:
        """One `train` record over all ranks (a collective), logged, then the interval starts again."""
        dist = trainer.dist
        counts = torch.tensor([float(self.tokens), float(self.items)], device=self.device, dtype=torch.float64)
        tokens, items = all_reduce(counts).tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        loss = self.loss / self.steps if self.steps else None
        batches = trainer.batches
        values = {
            "loss": loss,
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "grad_norm": json_number(grad_norm),
            "skipped_steps": self.skipped,
            "epoch": batches.epoch + batches.consumed / max(len(batches.sampler), 1),
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": items / elapsed,
        }
        if trainer.scaler.is_enabled():
            values["loss_scale"] = float(trainer.scaler.get_scale())
        trainer.metrics.log("train", trainer.step, values)
        bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "skipped", lr=f"{values['lr']:.2e}",
                        tok_s=f"{values['tokens_per_s']:.0f}")
        self.reset(trainer.step)
        return values


def json_number(value: float) -> float | str:
    """A float for a JSON record; inf/nan as the strings 'inf'/'nan' (strict JSON has no such numbers)."""
    return value if math.isfinite(value) else str(value)


class RunTotals:
    """Items, tokens, training time, the best validation loss and the data counts (truncations, skipped items),
    over all ranks and over every session of a resumed run."""

    def __init__(self, dist: DistInfo) -> None:
        self.dist = dist
        self.saved: dict[str, Any] = {"samples_seen": 0, "tokens_seen": 0, "train_time_s": 0.0,
                                      "best_val_loss": None, "best_step": None, "data": {},
                                      "skipped_steps": [], "skipped_in_a_row": 0}
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

    def skip(self, step: int, samples: list[int]) -> int:
        """Record a skipped step and the training samples in it; returns how many steps in a row were skipped."""
        self.saved["skipped_steps"] = [*self.saved["skipped_steps"], {"step": step, "samples": samples}]
        self.saved["skipped_in_a_row"] += 1
        return self.saved["skipped_in_a_row"]

    def updated(self) -> None:
        self.saved["skipped_in_a_row"] = 0

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
        "skipped_steps": totals["skipped_steps"],
    }
    if dist.is_main:
        atomic_write_json(trainer.output_dir / SUMMARY_FILE, summary)
        best = (f"{summary['best_checkpoint']} (step {summary['best_step']}, val loss {summary['best_val_loss']:.4f})"
                if summary["best_checkpoint"] else "none (no validation set)")
        say(dist, f"{'stopped' if interrupted else 'done'}: {trainer.step}/{trainer.total_steps} steps in {wall:.1f}s, "
                  f"{summary['tokens_per_s']:.0f} tokens/s, peak memory {human_bytes(memory)} ({memory_kind}); "
                  f"best checkpoint: {best}; last: {summary['last_checkpoint']}")
        skipped = summary["skipped_steps"]
        if skipped:
            say(dist, f"{len(skipped)} step(s) skipped for a non-finite loss or gradient norm: "
                      f"{format_ids([s['step'] for s in skipped])} (their samples: metrics.jsonl, summary.json)")
        data = summary["data"]
        if data.get("truncated") or data.get("skipped"):
            say(dist, f"data: {data.get('truncated', 0)} of {data.get('examples', 0)} examples truncated "
                      f"({data.get('prompt_tokens_cut', 0)} prompt / {data.get('target_tokens_cut', 0)} answer tokens "
                      f"cut), {data.get('skipped', 0)} items skipped"
                      + (f" ({data['too_long']} conversations whose first answer does not fit; "
                         f"{data['turns_dropped']} trailing turns dropped)" if "turns_dropped" in data else ""))
    return summary
