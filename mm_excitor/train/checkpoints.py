"""The checkpoint directory layout: atomic step directories, a `latest` pointer, `best`, and keep-last-N pruning.

    output_dir/checkpoints/
        step-{k}/   adapter_model.safetensors, adapter_config.json   (mm_excitor.load_adapter reads these)
                    optimizer.safetensors, trainer_state.json        (the resume state, see state.py)
                    checksums.json                                   (size + sha256 of the others)
        best/       the same four files for the step with the lowest validation loss
        latest      text file naming the newest complete step directory

Each directory appears whole or not at all (it is built in a hidden scratch directory and renamed), and `latest`
is rewritten atomically only after its directory exists, so a kill at any moment leaves the previous checkpoint
intact and pointed to. Hidden leftovers of an interrupted write are removed at the next start. A checkpoint
damaged later (a truncated or overwritten file) fails its checksums, and resuming passes over it (resume.py).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..adapter_io import write_adapter
from ..integrity import CHECKSUMS_NAME, DamagedCheckpointError, verify_checksums, write_checksums
from ..io import atomic_directory, atomic_write_bytes
from .state import STATE_JSON, ResumeState, write_resume_state

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def write_checkpoint(
    directory: Path, adapter_state: dict[str, torch.Tensor], adapter_metadata: dict[str, Any], resume_state: ResumeState
) -> Path:
    """Write adapter + resume state as one directory that replaces `directory` atomically.

    `adapter_state` holds full tensors (gathered under FSDP) and `adapter_metadata` was captured from the model
    before it was wrapped, so any method's adapter is written the same way `save_adapter` writes it."""
    with atomic_directory(directory) as scratch:
        write_adapter(scratch, adapter_state, adapter_metadata)
        write_resume_state(scratch, resume_state)
        write_checksums(scratch)
    return directory


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (no space left, a quota, an I/O error); the earlier ones are untouched."""


def write_checkpoint_or_report(
    directory: Path, adapter_state: dict[str, torch.Tensor], adapter_metadata: dict[str, Any],
    resume_state: ResumeState, *, update_latest: bool, keep_last: int | None,
) -> str | None:
    """Write a checkpoint, then (if `update_latest`) point `latest` at it and prune to `keep_last`; returns None,
    or what failed and what is left to resume from. A failed write leaves nothing of itself behind, and `latest`
    still names the previous complete checkpoint."""
    root = directory.parent.parent
    try:
        write_checkpoint(directory, adapter_state, adapter_metadata, resume_state)
        if update_latest:
            set_latest(root, directory)
            prune(root, keep_last, protect=directory)
    except OSError as error:
        previous = find_latest(root)
        left = (f"the last complete checkpoint is {previous} (`latest` names it): free space and rerun with "
                "train.resume=latest to continue from it" if previous is not None else "there is no earlier checkpoint")
        return f"could not write checkpoint {directory} ({error.strerror or error}); {left}"
    return None


def step_dir(root: Path, step: int) -> Path:
    return root / CHECKPOINTS / f"step-{step}"


def set_latest(root: Path, directory: Path) -> None:
    atomic_write_bytes(root / CHECKPOINTS / LATEST, (directory.name + "\n").encode())


def is_complete(directory: Path) -> bool:
    return (directory / STATE_JSON).is_file()


def damage(directory: Path) -> str | None:
    """Why `directory` cannot be resumed from (no resume state, a file that fails its checksum), or None."""
    if not is_complete(directory):
        return f"{STATE_JSON} is missing"
    try:
        verify_checksums(directory)
    except DamagedCheckpointError as error:
        return str(error)
    return None


def has_checksums(directory: Path) -> bool:
    return (directory / CHECKSUMS_NAME).is_file()


def step_dirs(root: Path, *, complete: bool = True) -> list[tuple[int, Path]]:
    """Step directories, oldest first: the complete ones (with a resume state), or all of them."""
    base = root / CHECKPOINTS
    if not base.is_dir():
        return []
    found = []
    for child in base.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (is_complete(child) or not complete):
            found.append((int(match.group(1)), child))
    return sorted(found)


def resume_candidates(root: Path) -> list[Path]:
    """Every step directory, in the order to try resuming from them: the one `latest` names, then newest first."""
    found = [directory for _, directory in reversed(step_dirs(root, complete=False))]
    named = latest_named(root)
    if named in found:
        found.remove(named)
        found.insert(0, named)
    return found


def latest_named(root: Path) -> Path | None:
    pointer = root / CHECKPOINTS / LATEST
    return root / CHECKPOINTS / pointer.read_text().strip() if pointer.is_file() else None


def find_latest(root: Path) -> Path | None:
    """The checkpoint `latest` names, else the highest complete step directory, else None."""
    candidate = latest_named(root)
    if candidate is not None and candidate.is_dir() and is_complete(candidate):
        return candidate
    dirs = step_dirs(root)
    return dirs[-1][1] if dirs else None


def prune(root: Path, keep_last: int | None, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` step directories (never `protect`, never `best`)."""
    if keep_last is None:
        return []
    removed = []
    for _, directory in step_dirs(root)[:-keep_last]:
        if protect is not None and directory.resolve() == protect.resolve():
            continue
        # Rename to a hidden name first so that a kill mid-deletion leaves no half-deleted visible checkpoint.
        doomed = directory.with_name(f".{directory.name}.deleting.tmp")
        os.replace(directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(directory)
    return removed


def clean_scratch(root: Path) -> list[Path]:
    """Remove hidden scratch/old/deleting entries left by a process killed mid-write."""
    base = root / CHECKPOINTS
    if not base.is_dir():
        return []
    removed = []
    for child in base.iterdir():
        if child.name.startswith(".") and child.name.endswith(".old") and child.is_dir():
            # atomic_directory parks the replaced directory here for an instant; a kill in that instant leaves the
            # only copy here, so put it back if nothing replaced it.
            for parked in child.iterdir():
                if not (base / parked.name).exists():
                    os.replace(parked, base / parked.name)
    for child in base.iterdir():
        if child.name.startswith(".") and (child.name.endswith(".tmp") or child.name.endswith(".old")):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed
