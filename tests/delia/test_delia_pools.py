"""Pools in Alpaca, chat-messages/ShareGPT and query-answer form; every bad record gets a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm_excitor.delia.pools import PoolRecord, load_pool

SEEDS = Path(__file__).resolve().parents[2] / "data" / "delia" / "seed_tasks.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value, indent=2))
    return path


def test_alpaca_json_joins_instruction_and_input_like_alpacas_template(tmp_path: Path) -> None:
    path = write_json(tmp_path / "alpaca.json", [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well."},
        {"instruction": "Translate to French: ", "input": " good morning ", "output": "bonjour"},
        {"instruction": "Name a colour.", "output": "Red."},  # input is optional
    ])
    pool = load_pool(path)
    assert pool.format == "alpaca" and pool.skipped == []
    assert pool.records == [
        PoolRecord("0", "Give three tips for staying healthy.", "Eat well."),
        PoolRecord("1", "Translate to French:\n\ngood morning", "bonjour"),
        PoolRecord("2", "Name a colour.", "Red."),
    ]


def test_chat_messages_jsonl_takes_the_first_user_turn_and_the_reply(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"id": "a", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"},
                                 {"role": "assistant", "content": "r1"}, {"role": "user", "content": "q2"},
                                 {"role": "assistant", "content": "r2"}]},
        {"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "r3"}]},
    ])
    pool = load_pool(path)
    assert pool.format == "messages"
    assert pool.records == [PoolRecord("a", "q1", "r1"), PoolRecord("1", "q3", "r3")]


def test_sharegpt_conversations_as_a_json_list(tmp_path: Path) -> None:
    path = write_json(tmp_path / "sharegpt.json", [
        {"id": "x7", "conversations": [{"from": "human", "value": "hello?"}, {"from": "gpt", "value": "hi!"}]},
        {"id": 12, "conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "2+2?"},
                                     {"from": "gpt", "value": "4"}]},
    ])
    assert load_pool(path).records == [PoolRecord("x7", "hello?", "hi!"), PoolRecord("12", "2+2?", "4")]


def test_query_answer_jsonl_and_explicit_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"query": "q", "answer": "a"}, "", {"id": "k", "query": "q2",
                                                                                  "answer": "a2"}])
    for fmt in ("auto", "qa"):
        pool = load_pool(path, format=fmt)
        assert pool.format == "qa" and pool.records == [PoolRecord("0", "q", "a"), PoolRecord("k", "q2", "a2")]
    with pytest.raises(ValueError, match=r"qa\.jsonl: line 1: 'instruction' is missing"):
        load_pool(path, format="alpaca")


def test_the_shipped_seed_set_is_a_qa_pool() -> None:
    pool = load_pool(SEEDS)
    assert pool.format == "qa" and 60 <= len(pool.records) <= 100
    assert len({r.query for r in pool.records}) == len(pool.records)
    assert len({json.loads(line)["kind"] for line in SEEDS.read_text().splitlines()}) >= 15


@pytest.mark.parametrize(("rows", "where", "problem"), [
    ([{"query": "q", "answer": "a"}, {"query": "q"}], "line 2", "'answer' is missing"),
    ([{"query": "q", "answer": "a"}, {"query": "  ", "answer": "a"}], "line 2", "'query' is empty"),
    ([{"query": "q", "answer": "a"}, {"query": 3, "answer": "a"}], "line 2", "'query' is not a string (int)"),
    ([{"query": "q", "answer": "a"}, '{"query": "q", '], "line 2", "malformed JSON"),
    ([{"query": "q", "answer": "a"}, '["q", "a"]'], "line 2", "expected a JSON object, got list"),
    ([{"prompt": "q", "completion": "a"}], "line 1", "cannot tell the pool format from the keys"),
    ([{"messages": [{"role": "user", "content": "q"}]}], "line 1", "is not followed by an assistant turn"),
    ([{"messages": [{"role": "assistant", "content": "a"}]}], "line 1", "'messages' has no user turn"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}], "line 1",
     "messages[1] has the unknown role 'robot'"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}], "line 1",
     "messages[1]: 'content' is empty"),
    ([{"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}], "line 1",
     "conversations[0]: 'value' is missing"),
    ([{"messages": "q"}], "line 1", "'messages' is not a list"),
])
def test_a_bad_jsonl_record_is_an_error_naming_file_and_line(tmp_path: Path, rows: list, where: str,
                                                             problem: str) -> None:
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    with pytest.raises(ValueError) as error:
        load_pool(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {where}: ") and problem in message and "\n" not in message


def test_a_bad_record_of_a_json_list_is_named_by_position(tmp_path: Path) -> None:
    path = write_json(tmp_path / "alpaca.json", [{"instruction": "i", "output": "o"}, {"instruction": "i"}])
    with pytest.raises(ValueError, match=r"alpaca\.json: record 1 of the JSON list \(from 0\): 'output' is missing"):
        load_pool(path)


def test_skip_policy_counts_bad_records_and_keeps_ids_stable(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pool.jsonl", [{"query": "q0", "answer": "a0"}, "{oops", {"query": "q2"},
                                                 {"query": "q3", "answer": "a3"}])
    pool = load_pool(path, on_bad_record="skip")
    assert pool.records == [PoolRecord("0", "q0", "a0"), PoolRecord("3", "q3", "a3")]
    assert len(pool.skipped) == 2 and pool.skipped[0].startswith(f"{path}: line 2: malformed JSON")
    assert pool.skipped[1] == f"{path}: line 3: 'answer' is missing"


@pytest.mark.parametrize(("content", "problem"), [
    ("", "the pool has no usable records"),
    ("[]", "the pool has no usable records"),
    ("[{\"instruction\": 1}", "malformed JSON"),
])
def test_empty_or_broken_pools(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "pool.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem):
        load_pool(path)


def test_a_pool_of_only_bad_records_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pool.jsonl", [{"query": "q"}])
    with pytest.raises(ValueError, match=r"no usable records \(1 bad records skipped, first: .*line 1"):
        load_pool(path, on_bad_record="skip")


def test_missing_file_non_utf8_and_unknown_options(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl: pool file not found"):
        load_pool(tmp_path / "nope.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"query": "caf\xe9", "answer": "a"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="latin.jsonl: not UTF-8"):
        load_pool(latin)
    with pytest.raises(ValueError, match="unknown pool format 'csv'"):
        load_pool(latin, format="csv")
    with pytest.raises(ValueError, match="unknown bad-record policy"):
        load_pool(latin, on_bad_record="ignore")
