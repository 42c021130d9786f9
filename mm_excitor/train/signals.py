"""SIGTERM/SIGINT end a run at the next optimiser-step boundary with a checkpoint, on every rank together."""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch

from .distributed import DistInfo, all_reduce


class TrainingInterrupted(SystemExit):
    """SIGTERM/SIGINT stopped the run after a checkpoint was written; exit status 128 + signal number."""

    def __init__(self, signal_name: str, signum: int, step: int, checkpoint: Any) -> None:
        super().__init__(128 + signum)
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint

    def __str__(self) -> str:
        return f"stopped by {self.signal_name} after step {self.step}; checkpoint {self.checkpoint}"


class StopSignals:
    """While active (a `with` block), SIGTERM/SIGINT only set a flag that `agreed()` reads at a step boundary; a
    second Ctrl-C raises KeyboardInterrupt at once (stop without a checkpoint)."""

    def __init__(self, dist: DistInfo) -> None:
        self.dist = dist
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def agreed(self) -> signal.Signals | None:
        """The signal if any rank received one (a collective: every rank calls it at the same step)."""
        flag = float(self.received or 0)
        if self.dist.distributed:
            flag = all_reduce(torch.tensor([flag], device=self.dist.device), op="max").item()
        return signal.Signals(int(flag)) if flag else None
