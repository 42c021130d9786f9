"""A stand-in for eval.meteor.MeteorProcess, for tests that exercise everything around METEOR.

METEOR's JVM takes seconds to start; its parity with pycocoevalcap is tested once
(tests/eval/test_eval_caption_scoring.py), so report and benchmark tests use this instead.
"""
from __future__ import annotations

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
