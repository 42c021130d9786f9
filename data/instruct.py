"""Readers of the instruction-data formats users have, into one record: `Conversation`.

- ``alpaca``: a JSON list or JSONL of ``{"instruction", "input", "output"}`` (``input`` optional; a non-empty one
  follows the instruction after a blank line, as Alpaca's own prompt puts it), optionally ``system``.
- ``messages``: JSONL (or a JSON list) of ``{"messages": [{"role", "content"}, ...]}``: OpenAI / Hugging Face chat
  format, roles system, user, assistant.
- ``sharegpt``: ``{"conversations": [{"from", "value"}, ...]}`` with from = human | gpt | system (user and
  assistant are accepted too).
- ``llava``: ShareGPT's layout as LLaVA-Instruct-150K and the LLaVA-1.5 mix write it: ``{"id", "image",
  "conversations"}``, ``image`` a path relative to ``image_root`` and an ``<image>`` placeholder in a human turn;
  records without ``image`` are text-only. The placeholder is removed from the text (the image reaches the model
  as the method's visual input, never as text).

``format="auto"`` detects the format of each file from its first record. Every conversation is checked: an
optional system turn, then user and assistant turns alternating, starting with the user and ending with an answer;
no empty answer; ``<image>`` only in a record with an image; the image path stays under its root. A bad record is a
one-line DataError naming the file and the record (index and id); ``on_bad_record="skip"`` drops it instead, and
the reader counts and logs what it dropped. A missing image file is the dataset's check (``on_bad_image``).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data.errors import DataError, image_under_root

log = logging.getLogger(__name__)

FORMATS = ("alpaca", "messages", "sharegpt", "llava")
IMAGE_PLACEHOLDER = "<image>"
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
OnBadRecord = Literal["error", "skip"]


@dataclass(frozen=True)
class Conversation:
    """One record of any format: its id, its messages ({"role", "content"}), its image (None: text-only)."""

    id: str
    messages: tuple[dict[str, str], ...]
    image: Path | None = None
    image_key: str | None = None
    """The image path relative to the image root (POSIX): the key of a feature cache."""
    source: str = ""
    """`file: record i (id x)`, how errors name the record."""


@dataclass
class ReadReport:
    """What reading the files kept and dropped (under on_bad_record='skip')."""

    kept: int = 0
    skipped: list[str] = field(default_factory=list)


def read_conversations(paths: Sequence[str | Path], fmt: str = "auto", image_root: str | Path = "",
                       on_bad_record: OnBadRecord = "error") -> tuple[list[Conversation], ReadReport]:
    """Every record of `paths`, in order, as Conversations."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown instruction data format {fmt!r}; one of auto, {', '.join(FORMATS)}")
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
    conversations, report = [], ReadReport()
    for path in paths:
        records = read_records(path)
        file_format = fmt if fmt != "auto" else detect_format(path, records)
        for index, record in enumerate(records):
            try:
                conversations.append(to_conversation(record, file_format, path, index, image_root))
            except DataError as error:
                if on_bad_record == "error":
                    raise
                report.skipped.append(str(error))
    report.kept = len(conversations)
    if report.skipped:
        log.warning("instruction data: skipped %d bad record(s) (on_bad_record='skip'), e.g. %s",
                    len(report.skipped), report.skipped[0])
    return conversations, report


def read_records(path: str | Path) -> list[Any]:
    """A JSON list, or JSON lines (blank lines ignored); errors name the file and line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(path, None, f"not valid JSON: {error}") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(path, f"line {number}", f"not valid JSON: {error}") from None
    return records


def detect_format(path: str | Path, records: Sequence[Any]) -> str:
    """The format of a file from its first record's keys."""
    if not records:
        raise DataError(path, None, "holds no records")
    first = records[0]
    if isinstance(first, dict):
        if "conversations" in first:
            return "llava" if any(isinstance(r, dict) and "image" in r for r in records) else "sharegpt"
        if "messages" in first:
            return "messages"
        if "instruction" in first and "output" in first:
            return "alpaca"
    keys = sorted(first) if isinstance(first, dict) else type(first).__name__
    raise DataError(path, "record 0", f"no known instruction format (keys {keys}); expected Alpaca "
                    "(instruction/input/output), chat messages (messages: role/content), ShareGPT or LLaVA "
                    "(conversations: from/value)")


def to_conversation(record: Any, fmt: str, path: str | Path, index: int, image_root: str | Path) -> Conversation:
    """One record as a checked Conversation; a DataError names the file and the record."""
    default_id = f"{Path(path).stem}-{index}"
    record_id = str(record.get("id", default_id)) if isinstance(record, dict) else default_id
    where = f"record {index} (id {record_id})"

    def bad(problem: str) -> DataError:
        return DataError(path, where, problem)

    if not isinstance(record, dict):
        raise bad(f"is a {type(record).__name__}, not a JSON object")
    messages = _messages(record, fmt, bad)
    image_name = record.get("image") if fmt == "llava" else None
    image = key = None
    if image_name is not None:
        if not isinstance(image_name, str) or not image_name:
            raise bad(f"image must be a relative path, got {image_name!r}")
        if not image_root:
            raise bad(f"has image {image_name!r} but data.image_root is not set")
        image = image_under_root(image_root, tuple(image_name.split("/")), path, where)
        key = "/".join(image_name.split("/"))
    has_placeholder = any(IMAGE_PLACEHOLDER in m["content"] for m in messages)
    if has_placeholder and image is None:
        raise bad(f"has an {IMAGE_PLACEHOLDER} placeholder but no image")
    messages = [{"role": m["role"], "content": m["content"].replace(IMAGE_PLACEHOLDER, "").strip()} for m in messages]
    check_roles(messages, bad)
    return Conversation(record_id, tuple(messages), image, key, f"{path}: {where}")


def _messages(record: dict, fmt: str, bad: Any) -> list[dict[str, str]]:
    if fmt == "alpaca":
        instruction, given, output = record.get("instruction"), record.get("input") or "", record.get("output")
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(given, str):
            raise bad("an Alpaca record needs string fields instruction and output (and input, if any)")
        question = instruction.strip() + (f"\n\n{given.strip()}" if given.strip() else "")
        system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        return system + [{"role": "user", "content": question}, {"role": "assistant", "content": output}]
    turns, role_key, content_key = ((record.get("messages"), "role", "content") if fmt == "messages"
                                    else (record.get("conversations"), "from", "value"))
    if not isinstance(turns, list) or not turns:
        raise bad(f"no {'messages' if fmt == 'messages' else 'conversations'} list ({fmt} format)")
    messages = []
    for turn_index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get(content_key), str):
            raise bad(f"turn {turn_index} needs a string {content_key!r}")
        role = turn.get(role_key)
        role = role if fmt == "messages" else SHAREGPT_ROLES.get(role)
        if role not in ("system", "user", "assistant"):
            raise bad(f"turn {turn_index} has unknown role {turn.get(role_key)!r}")
        messages.append({"role": role, "content": turn[content_key]})
    return messages


def check_roles(messages: Sequence[dict[str, str]], bad: Any) -> None:
    """An optional system turn, then user/assistant alternating from the user, ending with a non-empty answer."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns or turns[0]["role"] != "user":
        raise bad("the conversation does not start with a user turn (after an optional system turn)")
    for position, message in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise bad(f"roles out of order: turn {position} is {message['role']!r}, expected {expected!r}")
        if expected == "assistant" and not message["content"]:
            raise bad(f"turn {position} is an empty answer")
    if turns[-1]["role"] != "assistant":
        raise bad("the conversation ends with a user turn that has no answer")
