"""The streamed METEOR process stops cleanly and fails loudly. Its scores (equal to pycocoevalcap's on a set that
overflows the pipes) and its threads' clean-up are tested in tests/eval/test_eval_caption_scoring.py."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from pycocoevalcap.meteor.meteor import Meteor

from eval import meteor as meteor_module
from eval.meteor import MeteorError, MeteorProcess, score_line


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


class _RecordingPipe:
    """What pycocoevalcap's Meteor._stat writes, captured without a JVM; answers every request with one line."""

    def __init__(self) -> None:
        self.stdin = io.BytesIO()
        self.stdout = io.BytesIO(b"stats\n")

    def kill(self) -> None:  # what Meteor.__del__ calls
        pass

    def wait(self) -> None:
        pass


@pytest.mark.parametrize(("hypothesis", "references"), [
    ("a dog runs", ["a dog running", "the dog runs on grass"]),
    ("a ||| b  c", ["x ||| y", "two  spaces"]),  # the separator and double spaces, which _stat rewrites
    ("", ["an empty candidate"]),
])
def test_score_line_is_byte_for_byte_pycocoevalcap_request(hypothesis: str, references: list[str]) -> None:
    theirs = Meteor.__new__(Meteor)  # no JVM: only the request formatting is compared
    theirs.meteor_p, theirs.lock = _RecordingPipe(), threading.Lock()
    theirs._stat(hypothesis, references)
    assert theirs.meteor_p.stdin.getvalue() == (score_line(hypothesis, references) + "\n").encode()
