"""Where a run reports: `metrics.jsonl` (one JSON object per record) and TensorBoard, from rank 0 only.

On resume from step k, records past k (written after that checkpoint by the run that died) are dropped from
`metrics.jsonl` and purged from TensorBoard, so both show one clean curve.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..io import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.path = output_dir / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(output_dir / TENSORBOARD_DIR),
                purge_step=resume_step + 1 if resume_step is not None else None,
            )

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_bytes(self.path, "".join(f"{line}\n" for line in kept).encode())

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """One record: {"kind", "step", "time", **values}; numbers also go to TensorBoard as `{kind}/{name}`."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{name}", value, step)

    def log_text(self, tag: str, step: int, texts: list[Any]) -> None:
        if not self.enabled:
            return
        self.log(tag, step, {"samples": texts})
        if self._tb is not None:
            body = "\n\n".join(f"{i}. {json.dumps(t) if not isinstance(t, str) else t}" for i, t in enumerate(texts))
            self._tb.add_text(tag, body, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA max allocated on a GPU, else this process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_max_rss"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def say(dist: Any, message: str) -> None:
    """A progress message from rank 0 that does not break the progress bar."""
    if dist.is_main:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
