"""Test helpers around METEOR: a stand-in for eval.meteor.MeteorProcess, and a check that its processes are gone.

METEOR's JVM takes seconds to start; its parity with pycocoevalcap is tested once
(tests/eval/test_eval_caption_scoring.py), so report and benchmark tests use the stand-in instead.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


class StandInMeteor:
    """Scores every image `value` (a class attribute, so that a test can change it with monkeypatch)."""

    value = 0.5

    def __init__(self, workdir: Path | None = None) -> None:
        self.n_images = 0

    def __enter__(self) -> StandInMeteor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def submit(self, gts: dict, res: dict) -> None:
        self.n_images = len(gts)

    def result(self) -> tuple[float, list[float]]:
        return self.value, [self.value] * self.n_images


def process_group_is_gone(pgid: int, timeout: float = 10.0) -> bool:
    """True once no process of the group is left (an orphaned JVM may take a moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
