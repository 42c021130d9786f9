"""The METEOR helper process stops cleanly and fails loudly. Its scores (equal to pycocoevalcap's on 1,004 images)
and the stopping of its JVM after a whole scoring run are tested in tests/eval/test_eval_caption_scoring.py."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from eval import meteor as meteor_module
from eval.meteor import MeteorError, MeteorProcess
from tests.meteor_helpers import process_group_is_gone


def test_closing_before_scoring_stops_the_helper_and_its_jvm(tmp_path: Path) -> None:
    with MeteorProcess(tmp_path) as process:
        time.sleep(0.5)  # long enough for the helper to have started its JVM
        pgid = process._proc.pid
    assert process._proc.returncode is not None
    assert process_group_is_gone(pgid)
    assert list(tmp_path.iterdir()) == []  # its stderr file was anonymous


def test_a_failed_helper_is_an_error_with_its_stderr(monkeypatch) -> None:
    monkeypatch.setattr(meteor_module, "HELPER_COMMAND", (sys.executable, "-c", "import sys; sys.exit('no JVM here')"))
    with MeteorProcess() as process:
        with pytest.raises(MeteorError, match=r"METEOR helper .* exited with code 1: no JVM here"):
            process.submit({1: ["a dog"]}, {1: ["a dog"]})  # raises here if the helper has already exited
            process.result()


def test_submit_checks_its_input() -> None:
    with MeteorProcess() as process:
        with pytest.raises(ValueError, match="exactly one candidate per image"):
            process.submit({1: ["a"], 2: ["b"]}, {1: ["a"], 2: ["b", "c"]})
        with pytest.raises(RuntimeError, match="nothing was submitted"):
            process.result()
