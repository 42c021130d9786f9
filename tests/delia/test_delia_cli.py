"""python -m mm_excitor.delia: sampling by hand-launched ranks, and one-line errors with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mm_excitor.cli import run_cli
from mm_excitor.delia.__main__ import main
from tests.delia.helpers import chat_tokenizer
from tests.tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lm")
    tiny_model().save_pretrained(path)
    chat_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps([{"instruction": "describe the red circle", "input": "", "output": "a red circle"},
                                {"instruction": "is the square blue ?", "input": "yes", "output": "no"},
                                {"instruction": "answer", "input": "", "output": "yes"}]))
    return path


def sample_args(lm_dir: Path, pool: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", "--model", str(lm_dir), "--pool", str(pool), "--out", str(out), "--max-new-tokens", "6",
            "--batch-size", "2", "--device", "cpu", "--no-progress", *extra]


def test_ranks_launched_by_hand_merge_to_the_single_process_file(tmp_path, lm_dir, pool, monkeypatch, capsys):
    single = tmp_path / "one" / "s.jsonl"
    main(sample_args(lm_dir, pool, single))
    out = tmp_path / "two" / "s.jsonl"
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        main(sample_args(lm_dir, pool, out))
    assert "rank 1: its share is done" in capsys.readouterr().out
    assert out.read_bytes() == single.read_bytes()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in rows] == ["describe the red circle", "is the square blue ?\n\nyes",
                                                           "answer"]
    meta = json.loads((out.parent / "s.meta.json").read_text())
    assert meta["info"]["format"] == "alpaca" and meta["info"]["pool"] == str(pool)


def test_skipped_pool_records_are_reported(tmp_path, lm_dir, capsys):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"query": "yes", "answer": "no"}\n{"query": "no"}\n')
    assert run_cli(main, sample_args(lm_dir, path, tmp_path / "s.jsonl", "--on-bad-record", "skip")) == 0
    assert f"skipped 1 bad records of {path} (first: {path}: line 2: 'answer' is missing)" in capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    ({"--model": "missing-model"}, "error: no language model at missing-model (missing missing-model/config.json)"),
    ({"--pool": "missing.jsonl"}, "error: missing.jsonl: pool file not found"),
    ({"--temperature": "0"}, "error: decoding temperature must be > 0"),
    ({"--limit": "0"}, "error: limit must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, lm_dir, pool, capsys, change, message):
    args = sample_args(lm_dir, pool, tmp_path / "s.jsonl")
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_a_bad_record_names_file_and_line_from_the_command_line(tmp_path, lm_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "yes", "answer": "no"}\n{"query": "yes", "answer": ""}\n')
    result = subprocess.run([sys.executable, "-m", "mm_excitor.delia", *sample_args(lm_dir, bad, tmp_path / "s.jsonl")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == (f"error: {bad}: line 2: 'answer' is empty (--on-bad-record skip, or "
                             'on_bad_record="skip", skips such records)\n')


@pytest.mark.slow
def test_torchrun_with_gloo_merges_to_the_single_process_file(tmp_path, lm_dir, pool):
    """Two processes started by torchrun (process group, barrier, rank 0 merges): about 30 s on 2 busy cores."""
    single, out = tmp_path / "one" / "s.jsonl", tmp_path / "two" / "s.jsonl"
    main(sample_args(lm_dir, pool, single))
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "mm_excitor.delia",
                             *sample_args(lm_dir, pool, out)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 1: its share is done; rank 0 writes" in result.stdout
    assert out.read_bytes() == single.read_bytes()
