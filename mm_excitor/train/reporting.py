"""What a run reports: the counts behind its training records, run totals carried across resumes, and how records
and the summary are written and shown. The Trainer builds the records and the summary from its own state; this
module only counts, formats and writes."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..cli import format_ids
from ..io import atomic_write_json
from .batches import Batch
from .distributed import DistInfo, all_reduce, gather_objects
from .metrics import human_bytes

SUMMARY_FILE = "summary.json"


class Interval:
    """Loss, tokens and items since the last training record; the loss over the steps that updated the weights."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Start counting from now."""
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

    def measure(self) -> dict[str, Any]:
        """The interval's loss, skipped steps and throughput over all ranks (a collective); the interval then starts
        counting again from its end."""
        counts = torch.tensor([float(self.tokens), float(self.items)], device=self.device, dtype=torch.float64)
        tokens, items = all_reduce(counts).tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        measured = {"loss": self.loss / self.steps if self.steps else None, "skipped_steps": self.skipped,
                    "tokens_per_s": tokens / elapsed, "samples_per_s": items / elapsed}
        self.reset()
        return measured


def progress_postfix(record: dict[str, Any]) -> dict[str, str]:
    """What the progress bar shows of a `train` record."""
    loss = record["loss"]
    return {"loss": f"{loss:.4f}" if loss is not None else "skipped", "lr": f"{record['lr']:.2e}",
            "tok_s": f"{record['tokens_per_s']:.0f}"}


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


def write_summary(summary: dict[str, Any], output_dir: Path) -> Path:
    """summary.json in `output_dir`."""
    path = Path(output_dir) / SUMMARY_FILE
    atomic_write_json(path, summary)
    return path


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The closing message of a run: its length, speed, memory and checkpoints, then what it skipped."""
    best = (f"{summary['best_checkpoint']} (step {summary['best_step']}, val loss {summary['best_val_loss']:.4f})"
            if summary["best_checkpoint"] else "none (no validation set)")
    lines = [f"{'stopped' if summary['interrupted'] else 'done'}: {summary['steps']}/{summary['total_steps']} steps "
             f"in {summary['wall_time_s']:.1f}s, {summary['tokens_per_s']:.0f} tokens/s, peak memory "
             f"{human_bytes(summary['peak_memory_bytes'])} ({summary['peak_memory_kind']}); best checkpoint: {best}; "
             f"last: {summary['last_checkpoint']}"]
    skipped = summary["skipped_steps"]
    if skipped:
        lines.append(f"{len(skipped)} step(s) skipped for a non-finite loss or gradient norm: "
                     f"{format_ids([s['step'] for s in skipped])} (their samples: metrics.jsonl, summary.json)")
    data = summary["data"]
    if data.get("truncated") or data.get("skipped"):
        lines.append(f"data: {data.get('truncated', 0)} of {data.get('examples', 0)} examples truncated "
                     f"({data.get('prompt_tokens_cut', 0)} prompt / {data.get('target_tokens_cut', 0)} answer tokens "
                     f"cut), {data.get('skipped', 0)} items skipped"
                     + (f" ({data['too_long']} conversations whose first answer does not fit; "
                        f"{data['turns_dropped']} trailing turns dropped)" if "turns_dropped" in data else ""))
    return lines
