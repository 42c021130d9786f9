"""An append-only JSON-lines journal of committed groups of rows: work that survives a kill and resumes exactly.

Line 1 is a header: the settings the rows depend on. ``commit(rows)`` appends the rows and a ``{"commit": n}`` line
in one write, then fsyncs, so after a crash the file ends with a whole group, part of a group or part of a line.
Reopening keeps the committed groups and cuts the rest off; reopening with another header is refused, so rows
made under other settings are never mixed. Other processes (the other ranks) read a journal with
:func:`read_committed`, which never modifies it and ignores a group still being written. Evaluation's generated
outputs and DELIA's self-sampled answers are both written this way, one journal per rank
(:func:`process_group` checks that a rank/world size given by hand agrees with torch.distributed).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .diff import differences


class Journal:
    """The writer's side; one process per file."""

    def __init__(self, path: str | Path, header: dict[str, Any],
                 restart_hint: str = "delete it to start over, or write to another output path") -> None:
        self.path = Path(path)
        self.header = json_roundtrip(header)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        found, self.rows, committed_bytes = _scan(self.path)
        if found is not None and found != self.header:
            changes = differences(found, self.header)
            said = "; ".join(d.describe("journal", "now")[:200] for d in changes[:3])
            more = f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
            raise ValueError(f"{self.path} was written with other settings ({said}{more}); {restart_hint}")
        self._file = open(self.path, "ab")
        self._file.truncate(committed_bytes)
        if committed_bytes == 0:
            self._write([{"header": self.header}])

    def commit(self, rows: list[dict[str, Any]]) -> None:
        self._write([*rows, {"commit": len(rows)}])
        self.rows.extend(json_roundtrip(rows))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self._file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())
        self._file.flush()
        os.fsync(self._file.fileno())


def read_committed(path: str | Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, committed rows) of a journal, possibly being written by another process; (None, []) if absent."""
    header, rows, _ = _scan(Path(path))
    return header, rows


def _scan(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """(header, committed rows, byte length of the committed part)."""
    if not path.exists():
        return None, [], 0
    data = path.read_bytes()
    header: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    committed = offset = 0
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        offset += len(line)
        if not line.endswith(b"\n"):
            break  # a torn last line
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if offset == len(data):
                break  # a last line torn inside a multi-byte character or a number
            raise ValueError(f"{path}:{number}: corrupt line inside the journal; delete the file to redo its work"
                             ) from None
        if header is None:
            if not isinstance(row, dict) or "header" not in row:
                raise ValueError(f"{path}:1: not a journal header; delete the file or write to another output path")
            header, committed = row["header"], offset
        elif isinstance(row, dict) and set(row) == {"commit"}:
            if row["commit"] != len(pending):
                raise ValueError(f"{path}:{number}: a commit of {row['commit']} rows follows {len(pending)} rows")
            rows.extend(pending)
            pending, committed = [], offset
        else:
            pending.append(row)
    return header, rows, committed


def json_roundtrip(value: Any) -> Any:
    """As it reads back from the file (tuples become lists), so headers compare equal across runs."""
    return json.loads(json.dumps(value, ensure_ascii=False))



def process_group(rank: int, world_size: int) -> Any:
    """torch.distributed when it is initialised (`rank`/`world_size` must then agree with it), else None: ranks
    launched by hand (LLaVA's --chunk-idx style) pass their own."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise ValueError(f"rank/world_size {rank}/{world_size} disagree with torch.distributed "
                         f"({dist.get_rank()}/{dist.get_world_size()})")
    return dist
