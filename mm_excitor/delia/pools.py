"""General-instruction pools in the formats users have, read into (id, query, reference answer) records.

Formats (``--format``, detected from the first record when ``auto``); every one may be a JSON list or JSON lines:

- ``alpaca``: ``{"instruction", "input", "output"}`` (``input`` optional). The query is the instruction, then a
  blank line and the input when there is one: the two sections of Stanford Alpaca's ``prompt_input`` template
  (``### Instruction:\\n{instruction}\\n\\n### Input:\\n{input}``, ``PROMPT_DICT`` in tatsu-lab/stanford_alpaca
  ``train.py``) without its headers, which the chat template replaces.
- ``messages``: chat records, ``{"messages": [{"role", "content"}, ...]}`` or ShareGPT's
  ``{"conversations": [{"from", "value"}, ...]}``. The query is the first user turn, the reference the assistant
  turn right after it; system turns are ignored, later turns too.
- ``qa``: ``{"query", "answer"}``.

A record's ``id`` is its own ``"id"`` when it has one, else its position in the file (from 0), so ids do not
move when bad records are skipped. A bad record is an error naming the file and the line (JSON lines) or the
record's position (JSON list), or, with ``on_bad_record="skip"``, a counted skip.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POOL_FORMATS = ("alpaca", "messages", "qa")
BAD_RECORD_POLICIES = ("error", "skip")
USER_ROLES = {"user", "human"}
ASSISTANT_ROLES = {"assistant", "gpt", "chatgpt", "bard", "bing", "model"}
SYSTEM_ROLES = {"system"}


@dataclass(frozen=True)
class PoolRecord:
    id: str
    query: str
    answer: str


@dataclass(frozen=True)
class Pool:
    path: Path
    format: str
    records: list[PoolRecord]
    skipped: list[str] = field(default_factory=list)
    """One message per bad record skipped under ``on_bad_record="skip"``."""


class BadRecord(ValueError):
    """A record that is not a valid pool item; the message says what is wrong, the caller says where."""


def load_pool(path: str | Path, format: str = "auto", on_bad_record: str = "error") -> Pool:
    """Read a pool file; an empty pool, or one whose every record is bad, is an error."""
    path = Path(path)
    if format not in ("auto", *POOL_FORMATS):
        raise ValueError(f"unknown pool format {format!r}; choose auto or one of {', '.join(POOL_FORMATS)}")
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"unknown bad-record policy {on_bad_record!r}; choose one of {', '.join(BAD_RECORD_POLICIES)}")
    records: list[PoolRecord] = []
    skipped: list[str] = []
    for position, where, raw in _raw_records(path):
        try:
            if isinstance(raw, BadRecord):
                raise raw
            if not isinstance(raw, dict):
                raise BadRecord(f"expected a JSON object, got {type(raw).__name__}")
            if format == "auto":
                format = detect_format(raw)
            records.append(_PARSERS[format](raw, position))
        except BadRecord as error:
            message = f"{path}: {where}: {error}"
            if on_bad_record == "error":
                hint = ' (--on-bad-record skip, or on_bad_record="skip", skips such records)'
                raise ValueError(message + hint) from None
            skipped.append(message)
    if not records:
        detail = f" ({len(skipped)} bad records skipped, first: {skipped[0]})" if skipped else ""
        raise ValueError(f"{path}: the pool has no usable records{detail}")
    return Pool(path, format, records, skipped)


def detect_format(record: dict[str, Any]) -> str:
    if "messages" in record or "conversations" in record:
        return "messages"
    if "instruction" in record:
        return "alpaca"
    if "query" in record:
        return "qa"
    raise BadRecord(f"cannot tell the pool format from the keys {sorted(record)}: expected alpaca "
                    "(instruction/input/output), messages (messages or conversations) or qa (query/answer)")


def _raw_records(path: Path) -> Iterator[tuple[int, str, Any]]:
    """(position, location for messages, parsed record or a BadRecord) for each record of a JSON list or JSONL."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: pool file not found") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {error.lineno} column {error.colno}: malformed JSON: {error.msg}") from None
        for position, item in enumerate(items):
            yield position, f"record {position} of the JSON list (from 0)", item
        return
    position = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item: Any = json.loads(line)
        except json.JSONDecodeError as error:
            item = BadRecord(f"malformed JSON: {error.msg} (column {error.colno})")
        yield position, f"line {number}", item
        position += 1


def _text(record: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        problem = "missing" if value is None else f"not a string ({type(value).__name__})"
        raise BadRecord(f"{key!r} is {problem}")
    if required and not value.strip():
        raise BadRecord(f"{key!r} is empty")
    return value.strip()


def _record_id(record: dict[str, Any], position: int) -> str:
    value = record.get("id")
    return str(value) if isinstance(value, (str, int)) and str(value) else str(position)


def _alpaca(record: dict[str, Any], position: int) -> PoolRecord:
    instruction, context = _text(record, "instruction"), _text(record, "input", required=False)
    query = f"{instruction}\n\n{context}" if context else instruction
    return PoolRecord(_record_id(record, position), query, _text(record, "output"))


def _qa(record: dict[str, Any], position: int) -> PoolRecord:
    return PoolRecord(_record_id(record, position), _text(record, "query"), _text(record, "answer"))


def _messages(record: dict[str, Any], position: int) -> PoolRecord:
    key, role_key, content_key = (("messages", "role", "content") if "messages" in record
                                  else ("conversations", "from", "value"))
    turns = record.get(key)
    if not isinstance(turns, list):
        raise BadRecord(f"{key!r} is {'missing' if turns is None else 'not a list'}")
    roles = []
    for n, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRecord(f"{key}[{n}] is not an object")
        role = _turn_field(turns, n, key, role_key).lower()
        if role not in USER_ROLES | ASSISTANT_ROLES | SYSTEM_ROLES:
            raise BadRecord(f"{key}[{n}] has the unknown {role_key} {role!r}")
        roles.append(role)
    first_user = next((n for n, role in enumerate(roles) if role in USER_ROLES), None)
    if first_user is None:
        raise BadRecord(f"{key!r} has no user turn")
    if first_user + 1 >= len(turns) or roles[first_user + 1] not in ASSISTANT_ROLES:
        raise BadRecord(f"{key}[{first_user}] (the first user turn) is not followed by an assistant turn")
    query, answer = (_turn_field(turns, n, key, content_key) for n in (first_user, first_user + 1))
    return PoolRecord(_record_id(record, position), query, answer)


def _turn_field(turns: list[dict[str, Any]], n: int, key: str, name: str) -> str:
    try:
        return _text(turns[n], name)
    except BadRecord as error:
        raise BadRecord(f"{key}[{n}]: {error}") from None


_PARSERS = {"alpaca": _alpaca, "messages": _messages, "qa": _qa}
