"""Crash-safe files: a reader sees the old file or the new one, never half of one; bad JSON names its file.

Every write goes to a hidden temporary sibling, is flushed and fsynced, and is renamed over the target; the
directory is fsynced after the rename, so the new name survives a power cut too. This module imports nothing
heavy (no torch), so scoring commands can use it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: Path | str) -> None:
    """Make a rename or a new file inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """UTF-8 JSON (non-ASCII kept readable), one trailing newline."""
    atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path | str, rows: Iterable[Any]) -> None:
    """JSON lines, one object per line."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


class JSONFileError(ValueError):
    """A JSON file that is missing, not UTF-8 or not valid JSON; the message names the file and the place."""


def read_answer_texts(path: Path | str, key: str, key_type: Callable[[Any], Any]) -> dict[Any, str]:
    """key -> text of a JSON-lines answer file (``{key, ..., "text"}`` per line, as the eval commands write it);
    a bad line is an error naming the file and line."""
    answers = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                answers[key_type(row[key])] = str(row["text"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}: line {number}: expected {{\"{key}\", \"prompt\", \"text\"}}") from None
    return answers


def read_json(path: Path | str) -> Any:
    """Load a JSON file; a missing file, bad bytes or a syntax error is a JSONFileError naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise JSONFileError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise JSONFileError(f"{path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError as error:
        raise JSONFileError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise JSONFileError(f"{path}: not valid JSON (line {error.lineno} column {error.colno}: {error.msg})") from None


def read_json_document(path: Path | str, expected_format: str, what: str) -> dict[str, Any]:
    """The JSON object at `path` whose "format" field is `expected_format`; another document is a ValueError that
    says `what` the file should be."""
    document = read_json(path)
    found = document.get("format") if isinstance(document, dict) else None
    if found != expected_format:
        raise ValueError(f"{path} is not {what} (format {found!r}, expected {expected_format})")
    return document


@contextlib.contextmanager
def atomic_directory(path: Path | str) -> Iterator[Path]:
    """Yield a scratch directory that replaces `path` as a whole when the block exits without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield scratch
        for child in scratch.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(scratch, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
