"""Checksums of a checkpoint directory's files, so that a damaged checkpoint is found before anything reads it.

`checksums.json` lists every other file of the directory with its size and sha256. It is written last, into the
scratch directory that is then renamed into place, and read first: a truncated or overwritten file, a missing one
or a damaged manifest is a `DamagedCheckpointError` naming the file. Directories written before checksums existed
have no manifest; they are accepted unverified (`verify_checksums` returns False), as they always were.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from .io import JSONFileError, atomic_write_json, read_json

CHECKSUMS_NAME = "checksums.json"
CHECKSUMS_FORMAT = "mm_excitor.checksums/v1"
_CHUNK = 1 << 20


class DamagedCheckpointError(ValueError):
    """A checkpoint file is missing, or its size or sha256 differs from what the checkpoint recorded."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(directory: Path | str) -> None:
    """Record the size and sha256 of every file in `directory` (call after the last of them is written)."""
    directory = Path(directory)
    files = {
        child.name: {"bytes": child.stat().st_size, "sha256": file_sha256(child)}
        for child in sorted(directory.iterdir()) if child.is_file() and child.name != CHECKSUMS_NAME
    }
    atomic_write_json(directory / CHECKSUMS_NAME, {"format": CHECKSUMS_FORMAT, "files": files})


def verify_checksums(directory: Path | str, names: Iterable[str] | None = None) -> bool:
    """Check the files `names` (default: every file the manifest lists) against the manifest.

    Returns False when the directory has no manifest (written before checksums existed: nothing to check), True
    when every file checked matches; raises DamagedCheckpointError otherwise."""
    directory = Path(directory)
    path = directory / CHECKSUMS_NAME
    if not path.exists():
        return False
    try:
        manifest = read_json(path)
    except JSONFileError as error:
        raise DamagedCheckpointError(f"{directory}: damaged checksum list ({error})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != CHECKSUMS_FORMAT:
        raise DamagedCheckpointError(f"{path}: not a checksum list of format {CHECKSUMS_FORMAT}")
    for name in files if names is None else names:
        expected = files.get(name)
        if expected is None:
            raise DamagedCheckpointError(f"{directory / name}: not in the checkpoint's checksum list")
        target = directory / name
        if not target.is_file():
            raise DamagedCheckpointError(f"{target}: missing (the checkpoint recorded it)")
        size = target.stat().st_size
        if size != expected["bytes"]:
            raise DamagedCheckpointError(f"{target}: {size} bytes, the checkpoint recorded {expected['bytes']}")
        if file_sha256(target) != expected["sha256"]:
            raise DamagedCheckpointError(f"{target}: sha256 differs from the one the checkpoint recorded")
    return True
