"""Error types for bad input: every message names the file, the record and what is wrong."""

from __future__ import annotations

import posixpath
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
    """A training set contains held-out images (Karpathy test, or the validation/evaluation sets in use), or an
    evaluation set would come from training data."""


class UnsafePathError(DataError):
    """An image path in an annotation file that is absolute or leaves its image root (``../../etc/passwd``)."""


def image_under_root(image_root: str | Path, parts: tuple[str, ...], file: str | Path, record: object) -> Path:
    """``image_root / parts[0] / parts[1] ...``, refused when a part is absolute or the path leaves the root.

    The check is on the path the annotation file spells, normalised (``a/../..`` leaves, ``a/../b`` does not), not on
    the resolved file: the annotation controls the string, while symlinks under the root are the user's own layout
    (COCO folders linked in from a shared disk) and must keep working, as must a symlinked root.
    """
    key = "/".join(parts)
    normal = posixpath.normpath(key)
    if posixpath.isabs(key) or any(posixpath.isabs(p) for p in parts) or normal == ".." or normal.startswith("../"):
        raise UnsafePathError(file, record, f"image path {key!r} is outside the image root {image_root}; "
                              "annotation paths must be relative and stay under the root")
    return Path(image_root) / key
