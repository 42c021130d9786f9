"""The streamed METEOR process stops cleanly and fails loudly. Its scores (equal to pycocoevalcap's on a set that
overflows the pipes) and its threads' clean-up are tested in tests/eval/test_eval_caption_scoring.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval import meteor as meteor_module
from eval.meteor import MeteorError, MeteorProcess


def test_meteor_process_stops_its_jvm(tmp_path: Path) -> None:
    with MeteorProcess(tmp_path) as process:
        proc = process._proc
    assert proc.poll() is not None
    assert list(tmp_path.iterdir()) == []  # its stderr file was anonymous


def test_a_failed_meteor_process_is_an_error_naming_its_command(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(meteor_module, "METEOR_COMMAND", ("java", "-jar", str(tmp_path / "missing.jar")))
    with MeteorProcess() as process:
        process.submit({1: ["a dog"]}, {1: ["a dog"]})
        with pytest.raises(MeteorError, match=r"METEOR process \(java -jar .*missing\.jar\) exited with code 1: .*"
                                              r"missing\.jar"):
            process.result()


def test_submit_checks_its_input() -> None:
    with MeteorProcess() as process:
        with pytest.raises(ValueError, match="exactly one candidate per image"):
            process.submit({1: ["a"], 2: ["b"]}, {1: ["a"], 2: ["b", "c"]})
        with pytest.raises(RuntimeError, match="nothing was submitted"):
            process.result()
