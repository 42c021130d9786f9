"""Error types for bad input: every message names the file, the record and what is wrong."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. A ValueError so that callers catching ValueError keep working."""

    def __init__(self, file: str | Path, record: object, problem: str) -> None:
        self.file = str(file)
        self.record = record
        self.problem = problem
        where = f"{self.file}: {record}" if record is not None else self.file
        super().__init__(f"{where}: {problem}")


class ImageError(DataError):
    """A missing or unreadable image; `file` is the image, `record` the record that refers to it."""


class LeakageError(DataError):
    """A training set contains images of the evaluation (Karpathy test) split."""


def read_json(path: str | Path) -> object:
    """Load a JSON file, turning a missing file or a syntax error into a DataError that names the file."""
    import json

    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno} column {e.colno}", f"malformed JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"byte {e.start}", "not UTF-8 text") from None
