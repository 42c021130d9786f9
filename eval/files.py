"""Small file helpers: every output is written atomically, so an interrupted run never leaves half a file."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path


def write_text_atomic(text: str, path: Path) -> None:
    """Write `text` to a temporary sibling and rename it over `path`: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(obj: object, path: Path, *, indent: int | None = 2) -> None:
    """Atomic JSON write (UTF-8, non-ASCII kept readable)."""
    write_text_atomic(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", path)


def write_jsonl_atomic(rows: Iterable[dict], path: Path) -> None:
    """Atomic JSON-lines write, one object per line."""
    write_text_atomic("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), path)


def read_json(path: Path) -> object:
    """Load a JSON file; a missing file or a syntax error becomes a ValueError that names the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def format_ids(ids: Sequence[object], limit: int = 10) -> str:
    """`1, 2, 3 (+7 more)`: error messages name the offending ids without flooding the terminal."""
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")
