"""The METEOR helper process stops cleanly and fails loudly. Its scores (equal to pycocoevalcap's on 1,004 images)
and the stopping of its JVM after a whole scoring run are tested in tests/eval/test_eval_caption_scoring.py."""

from __future__ import annotations

import os
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


def test_a_dying_jvm_is_reported_in_one_line_with_its_last_words(tmp_path: Path, monkeypatch) -> None:
    fake_java = tmp_path / "bin" / "java"
    fake_java.parent.mkdir()
    fake_java.write_text("#!/bin/sh\necho 'Error: Unable to access jarfile meteor-1.5.jar' >&2\nexit 1\n")
    fake_java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_java.parent}{os.pathsep}{os.environ['PATH']}")
    with MeteorProcess() as process:
        process.submit({1: ["a dog"]}, {1: ["a dog"]})
        with pytest.raises(MeteorError, match=r"exited with code 1: \w+Error: .*the JVM said: Error: Unable to access "
                                              r"jarfile meteor-1\.5\.jar$") as error:
            process.result()
    assert "\n" not in str(error.value)
