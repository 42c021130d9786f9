"""Batched, resumable, sharded generation, shared by the caption and ScienceQA evaluators.

Rank r takes items r, r + W, r + 2W, ... (W = world size) and commits one JSON line per item to its journal
`{output}.rank{r}.jsonl` after every batch (mm_excitor.journal), so a run that dies resumes where it stopped (items
whose id is already committed are skipped; a half-written batch is dropped). The journal's header holds the
decoding settings and the caller's `source` (e.g. the adapter's fingerprint), and resuming with other settings or
from another source is refused rather than mixing outputs. A finished rank writes `{output}.rank{r}.done`. The
parts are merged, deduplicated by id and in dataset order, by rank 0 after a barrier when torch.distributed is
initialised, otherwise by whichever rank finds every shard done (ranks launched by hand, LLaVA's --chunk-idx
style). The merge writes the task's output file and `{stem}.meta.json` (the decoding settings the scorer puts in
its report).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mm_excitor.decoding import Decoding
from mm_excitor.io import atomic_write_json, read_json
from mm_excitor.journal import Journal, process_group, read_committed

if TYPE_CHECKING:  # scoring imports this module for read_generation_meta: no torch at import time
    import torch

    from data.collate import Collator


class GenerativeModel(Protocol):
    """The part of a method's model that evaluation uses (mm_excitor.vision_language.VisionLanguageModel.generate)."""

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None = None,
                 visual_tokens: torch.Tensor | None = None, has_image: torch.Tensor | None = None, *,
                 decoding: Decoding) -> list[str]: ...


class EvalDataset(Protocol):
    """A map-style dataset of eval items: dicts with `prompt`, `image` or `visual_tokens`, `has_image`, `meta`,
    or None for an item whose image was skipped as unreadable."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Any] | None: ...


def part_path(output: Path, rank: int) -> Path:
    return Path(output).with_name(f"{Path(output).name}.rank{rank}.jsonl")


def done_path(output: Path, rank: int) -> Path:
    return Path(output).with_name(f"{Path(output).name}.rank{rank}.done")


def meta_path(output: Path) -> Path:
    """Where the generation metadata of a results file lives: `R.json` -> `R.meta.json`."""
    return Path(output).with_name(f"{Path(output).stem}.meta.json")


def generate_outputs(
    model: GenerativeModel,
    dataset: EvalDataset,
    collator: Collator,
    *,
    task: str,
    id_key: str,
    decoding: Decoding,
    output: Path,
    write_output: Callable[[list[dict], Path], None],
    resume: bool = True,
    rank: int = 0,
    world_size: int = 1,
    source: Mapping[str, Any] | None = None,
) -> Path | None:
    """Generate this rank's shard, then merge if this call completes the set; return `output` if it merged.

    Prompts are batched by `collator.prompts` (the task's own tokenisation and truncation, left-padded). `id_key` names the id in `item["meta"]` (image_id, pid); `write_output` turns the merged records
    (`{"index", "id", "prompt", "text"}`, in dataset order) into the task's official file. `source` (JSON-able:
    e.g. the adapter's fingerprint and the split) joins the decoding settings in the part header, so resuming
    from parts made by another checkpoint is refused like resuming with other settings; it is copied to the meta.
    """
    dist = process_group(rank, world_size)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    part, done = part_path(output, rank), done_path(output, rank)
    done.unlink(missing_ok=True)
    if not resume:
        part.unlink(missing_ok=True)
    header = {"task": task, "decoding": decoding.as_dict()}
    if source is not None:
        header["source"] = dict(source)
    restart = "pass resume=False (--no-resume) to start over, or use another output path"
    with Journal(part, header, restart_hint=restart) as journal:
        finished = {record["id"] for record in journal.rows}
        batch: list[tuple[int, Mapping[str, Any]]] = []
        skipped = 0
        for index in range(rank, len(dataset), world_size):
            item = dataset[index]
            if item is None:  # an unreadable image the dataset was told to skip; scoring will see it missing
                skipped += 1
                continue
            item_id = item["meta"][id_key]
            if type(item_id) not in (int, str):
                raise TypeError(f"item {index}: meta[{id_key!r}] is a {type(item_id).__name__}, expected int or str")
            if item_id in finished:
                continue
            finished.add(item_id)
            batch.append((index, item))
            if len(batch) == decoding.batch_size:
                journal.commit(_generate_batch(model, collator, batch, id_key, decoding))
                batch = []
        if batch:
            journal.commit(_generate_batch(model, collator, batch, id_key, decoding))
    atomic_write_json(done, {"world_size": world_size, "n_items": len(dataset), "n_skipped": skipped})
    if dist is not None:
        dist.barrier()
        if rank != 0:
            return None
    elif not _all_done(output, world_size, len(dataset)):
        return None
    return merge_parts(output, task=task, decoding=decoding, world_size=world_size, n_items=len(dataset),
                       write_output=write_output, source=source)


def merge_parts(
    output: Path, *, task: str, decoding: Decoding, world_size: int, n_items: int,
    write_output: Callable[[list[dict], Path], None], source: Mapping[str, Any] | None = None,
) -> Path:
    """Merge every rank's part into `output` (first record per id wins, dataset order) plus `{stem}.meta.json`."""
    records: list[dict] = []
    for r in range(world_size):
        if not part_path(output, r).exists():
            raise FileNotFoundError(f"{part_path(output, r)}: part file missing")
        header, rows = read_committed(part_path(output, r))
        if header is not None and header["decoding"] != decoding.as_dict():
            raise ValueError(f"{part_path(output, r)} was generated with {header['decoding']}, not {decoding.as_dict()}")
        if header is not None and header.get("source") != (None if source is None else dict(source)):
            raise ValueError(f"{part_path(output, r)} was generated from {header.get('source')}, not {source}")
        records.extend(rows)
    records.sort(key=lambda rec: rec["index"])
    merged: dict[int | str, dict] = {}
    for rec in records:
        merged.setdefault(rec["id"], rec)
    write_output(list(merged.values()), output)
    atomic_write_json(meta_path(output), {
        "task": task,
        "decoding": decoding.as_dict(),
        "world_size": world_size,
        "n_items": n_items,
        "n_outputs": len(merged),
        "n_duplicate_ids": len(records) - len(merged),
        "n_skipped_items": sum(read_json(done_path(output, r))["n_skipped"] for r in range(world_size)),
        "parts": [part_path(output, r).name for r in range(world_size)],
        **({"source": dict(source)} if source is not None else {}),
    })
    return output


def _generate_batch(
    model: GenerativeModel, collator: Collator, batch: list[tuple[int, Mapping[str, Any]]], id_key: str,
    decoding: Decoding,
) -> list[dict]:
    items = [item for _, item in batch]
    prompts = collator.prompts(items)
    texts = model.generate(**prompts.inputs, decoding=decoding)
    if len(texts) != len(items):
        raise RuntimeError(f"model.generate returned {len(texts)} texts for {len(items)} prompts")
    return [{"index": index, "id": item["meta"][id_key], "prompt": item["prompt"], "text": text.strip()}
            for (index, item), text in zip(batch, texts)]


def _all_done(output: Path, world_size: int, n_items: int) -> bool:
    def matches(marker: object) -> bool:
        return isinstance(marker, dict) and (marker.get("world_size"), marker.get("n_items")) == (world_size, n_items)

    return all(done_path(output, r).exists() and matches(read_json(done_path(output, r))) for r in range(world_size))


def read_generation_meta(results: Path, explicit: Path | None) -> tuple[dict | None, Path | None]:
    """The decoding settings for a score report: from `explicit`, else from the results' `{stem}.meta.json`.

    A file with a "decoding" key (ours) gives that dict; any other JSON object is taken as the settings.
    """
    path = explicit if explicit is not None else meta_path(results)
    if explicit is None and not path.exists():
        return None, None
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: decoding settings must be a JSON object")
    settings = data.get("decoding", data)
    return (dict(settings), path) if isinstance(settings, dict) else (None, path)
