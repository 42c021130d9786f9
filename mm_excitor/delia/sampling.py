"""DELIA self-sampling: the frozen model's own answer to every pool query, with the reference as a one-shot example.

For each pool record (q, r) the model is prompted with the chat ``[user: q, assistant: r, user: q]``
(:mod:`mm_excitor.delia.chat`) and one answer is sampled with temperature 0.7 and top-p 0.95 (no top-k, no
penalties: the authors' vLLM settings, whatever the model's own generation config says), at most
``max_new_tokens`` new tokens; the end-of-turn token is cut off and nothing is filtered. Each answer becomes
``{"id", "messages": [user q, assistant answer], "finish"}``, one JSON line per record, in pool order.

Batches are fixed slices of the pool (batch k = records ``k*B .. k*B+B-1``) and batch k is sampled under its own
seed, derived from ``(seed, k)``; so the file depends on the model, the pool, the sampling settings and the batch
size, but not on how many ranks share the work, nor on where a run was interrupted. Rank r of W takes batches
r, r + W, ... and commits each one to its journal ``{output}.rank{r}.jsonl`` (:mod:`mm_excitor.delia.journal`);
a rerun skips every batch committed by any rank's journal. Whichever rank finds every batch committed (rank 0 after
a barrier under torch.distributed) merges them into ``output`` and writes ``{stem}.meta.json``.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..identity import language_model_identity
from ..decoding import Decoding
from ..io import atomic_write_json, atomic_write_jsonl
from .chat import (decode_answer, encode_chat_prompt, has_chat_template, one_shot_messages, pad_token_id,
                   stop_token_ids)
from .generate import derive_seed, sample_ids, sampling_decoding, sampling_kwargs
from ..journal import Journal, json_roundtrip, process_group, read_committed
from .pools import PoolRecord


@dataclass(frozen=True)
class SamplingConfig:
    """What the sampled file depends on besides the model and the pool."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    batch_size: int = 8
    """Part of the result: batch k is sampled under the seed of (seed, k)."""
    seed: int = 0
    limit: int | None = None
    """Sample the first `limit` pool records only."""
    max_prompt_tokens: int = 2048
    """Longer [q, r, q] prompts are skipped (counted in the meta), never cut: a cut reference would teach cut answers.
    Lowered to the model's positions minus max_new_tokens when those are fewer."""
    system_prompt: str | None = None
    """A system turn before [q, r, q]; None keeps the chat template's default. The authors' code used
    "You are a helpful AI assistant."."""

    def __post_init__(self) -> None:
        _ = self.decoding  # Decoding checks max_new_tokens, temperature, top_p and batch_size
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1: {self}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for the whole pool): {self}")


    @property
    def decoding(self) -> Decoding:
        return sampling_decoding(self.batch_size, self.max_new_tokens, self.temperature, self.top_p)


def part_path(output: str | Path, rank: int) -> Path:
    return Path(output).with_name(f"{Path(output).name}.rank{rank}.jsonl")


def meta_path(output: str | Path) -> Path:
    """`samples.jsonl` -> `samples.meta.json`."""
    return Path(output).with_name(f"{Path(output).stem}.meta.json")


def sample_answers(
    model: Any,
    tokenizer: Any,
    records: Sequence[PoolRecord],
    config: SamplingConfig,
    output: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
) -> Path | None:
    """Sample this rank's batches, then merge if every batch is done; returns `output` if this call merged it.

    `model` is a Hugging Face causal LM in eval mode (the frozen LM about to be tuned), `tokenizer` its tokenizer.
    `info` (JSON-able, e.g. the pool's path and skipped records) is copied to the meta file only.
    """
    records = list(records)[: config.limit]
    if not records:
        raise ValueError("no pool records to sample from")
    dist = process_group(rank, world_size)
    output = Path(output)
    header = sampling_header(model, tokenizer, records, config)
    batches = range(math.ceil(len(records) / config.batch_size))
    mine = batches[rank::world_size]
    with Journal(part_path(output, rank), header) as journal:
        done = _committed_batches(output, header, rank, journal.rows)
        todo = [batch for batch in mine if batch not in done]
        sampler = _BatchSampler(model, tokenizer, records, config, header["prompt_limit"])
        with tqdm(total=sum(sampler.size(b) for b in mine), initial=sum(sampler.size(b) for b in mine if b in done),
                  unit="record", desc="DELIA self-sampling", disable=not progress or rank != 0) as bar:
            for batch in todo:
                journal.commit(sampler(batch))
                bar.update(sampler.size(batch))
    if dist is not None:
        dist.barrier()
        if rank != 0:
            return None
    return merge_samples(output, header, len(records), info)


def sampling_header(model: Any, tokenizer: Any, records: Sequence[PoolRecord], config: SamplingConfig) -> dict:
    """Everything the sampled rows depend on; a journal written under another header is not resumed."""
    identity = dict(language_model_identity(model))
    identity.pop("name_or_path", None)  # the same weights may be moved
    positions = getattr(model.config, "max_position_embeddings", None)
    prompt_limit = config.max_prompt_tokens
    if positions is not None:
        prompt_limit = min(prompt_limit, int(positions) - config.max_new_tokens)
        if prompt_limit < 1:
            raise ValueError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the model's "
                             f"{positions} positions")
    template = getattr(tokenizer, "chat_template", None) if has_chat_template(tokenizer) else None
    pool = json.dumps([[r.id, r.query, r.answer] for r in records], ensure_ascii=False).encode()
    return json_roundtrip({
        "delia": "self-sample",
        "config": asdict(config),
        "prompt_limit": prompt_limit,
        "model": identity,
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "size": len(tokenizer),
            "chat_template_sha256": _sha256(str(template).encode()) if template is not None else None,
        },
        "pool": {"records": len(records), "sha256": _sha256(pool)},
    })


class _BatchSampler:
    """Turns batch k of the pool into its journal rows."""

    def __init__(self, model: Any, tokenizer: Any, records: list[PoolRecord], config: SamplingConfig,
                 prompt_limit: int) -> None:
        self.model, self.tokenizer, self.records, self.config = model, tokenizer, records, config
        self.prompt_limit = prompt_limit
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.generate_kwargs = sampling_kwargs(config.decoding, self.stop_ids, pad_token_id(tokenizer, self.stop_ids))

    def indices(self, batch: int) -> range:
        start = batch * self.config.batch_size
        return range(start, min(start + self.config.batch_size, len(self.records)))

    def size(self, batch: int) -> int:
        return len(self.indices(batch))

    def __call__(self, batch: int) -> list[dict[str, Any]]:
        rows, prompts = [], []
        for index in self.indices(batch):
            record = self.records[index]
            ids = encode_chat_prompt(self.tokenizer,
                                     one_shot_messages(record.query, record.answer, self.config.system_prompt))
            if len(ids) > self.prompt_limit:
                rows.append({"index": index, "id": record.id,
                             "skipped": f"the [q, r, q] prompt has {len(ids)} tokens, more than {self.prompt_limit}"})
            else:
                prompts.append((index, ids))
        if prompts:
            samples = sample_ids(self.model, [ids for _, ids in prompts], self.generate_kwargs,
                                 derive_seed("delia-self-sample", self.config.seed, batch))
            for (index, _), new_ids in zip(prompts, samples):
                answer, finish = decode_answer(self.tokenizer, new_ids, self.stop_ids)
                record = self.records[index]
                rows.append({"index": index, "id": record.id, "finish": finish, "messages": [
                    {"role": "user", "content": record.query}, {"role": "assistant", "content": answer}]})
        return sorted(rows, key=lambda row: row["index"])


def merge_samples(output: Path, header: dict, n_records: int, info: Mapping[str, Any] | None = None) -> Path | None:
    """Write `output` (pool order) and its meta from every rank's journal; None while some batch is missing."""
    rows: dict[int, dict[str, Any]] = {}
    duplicates = 0
    parts = _part_files(output)
    for part in parts:
        found, committed = read_committed(part)
        _check_header(part, found, header)
        for row in committed:
            duplicates += row["index"] in rows
            rows.setdefault(row["index"], row)
    if len(rows) < n_records:
        return None
    ordered = [rows[index] for index in range(n_records)]
    samples = [{"id": row["id"], "messages": row["messages"], "finish": row["finish"]}
               for row in ordered if "messages" in row]
    skipped = [{"id": row["id"], "reason": row["skipped"]} for row in ordered if "skipped" in row]
    atomic_write_jsonl(output, samples)
    atomic_write_json(meta_path(output), {
        **header,
        "n_samples": len(samples),
        "n_finished_by_length": sum(s["finish"] == "length" for s in samples),
        "n_empty_answers": sum(not s["messages"][1]["content"] for s in samples),
        "n_skipped_prompts": len(skipped),
        "skipped_prompts": skipped[:20],
        "n_duplicate_rows": duplicates,
        "parts": [p.name for p in parts],
        **({"info": dict(info)} if info is not None else {}),
    })
    return output


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """The records of a sampled file (`{"id", "messages", "finish"}`), checked: what the mixing stage reads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: self-sampled file not found (`python -m mm_excitor.delia sample` makes it)")
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            messages = row["messages"]
            if [m["role"] for m in messages] != ["user", "assistant"] or not all(
                    isinstance(m["content"], str) for m in messages):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: line {number}: not a self-sampled record "
                             '({"messages": [user, assistant], ...})') from None
        samples.append(row)
    return samples


def _committed_batches(output: Path, header: dict, rank: int, own_rows: list[dict[str, Any]]) -> set[int]:
    """Batches committed to any rank's journal (this rank's rows are passed in, its journal already repaired)."""
    indices = {row["index"] for row in own_rows}
    for part in _part_files(output):
        if part != part_path(output, rank):
            found, rows = read_committed(part)
            _check_header(part, found, header)
            indices.update(row["index"] for row in rows)
    return {index // header["config"]["batch_size"] for index in indices}


def _part_files(output: Path) -> list[Path]:
    """Every rank's journal, from this run or from an earlier one with another world size."""
    prefix, suffix = f"{output.name}.rank", ".jsonl"
    if not output.parent.is_dir():
        return []
    ranks = {p: p.name[len(prefix):-len(suffix)] for p in output.parent.iterdir()
             if p.name.startswith(prefix) and p.name.endswith(suffix)}
    return sorted((p for p, rank in ranks.items() if rank.isdigit()), key=lambda p: int(ranks[p]))


def _check_header(part: Path, found: dict | None, header: dict) -> None:
    if found is not None and found != header:
        raise ValueError(f"{part} was sampled with other settings, model or pool; delete it (or every "
                         f"{part.name.rsplit('.rank', 1)[0]}.rank*.jsonl) to start over, or write to another output")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
