"""The held-out human-written instructions: every third seed task of each kind in ``data/delia/seed_tasks.jsonl``,
never tuned on, so the answer NLL on them measures what tuning did to the model's general instruction following.

    python -m data.heldout --tuning-seeds runs/pool/tuning_seeds.jsonl    # the seeds a comparison may grow from
    python -m data.heldout --check runs/pool/pool-200.jsonl               # no pool record repeats a held-out one

The split is a rule on the shipped file (record order within each ``kind``), so it needs no second copy of the
seeds. A comparison that tunes on general instructions grows its DELIA pool from ``--tuning-seeds`` only; ``--check``
then confirms that no record of a pool (any format ``mm_excitor.delia`` reads) has a query or answer that is the
same normalised text as, or within ROUGE-L F1 0.7 of, a held-out instruction, its answer, or a probe question
(self-instruct's own near-duplicate test, ``mm_excitor/delia/similarity.py``).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mm_excitor.cli import run_cli
from mm_excitor.delia.similarity import NearDuplicateIndex
from mm_excitor.io import atomic_write_jsonl

REPO = Path(__file__).resolve().parents[1]
SEED_TASKS = REPO / "data" / "delia" / "seed_tasks.jsonl"
PROBE_FILE = REPO / "data" / "probe" / "probe.jsonl"
HELDOUT_EVERY = 3
"""The n-th seed of a kind is held out when n (1-based) is a multiple of this."""
MAX_SIMILARITY = 0.7


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a bad line is an error naming the file and line."""
    import json

    from data.errors import DataError

    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(path, f"line {number}", f"not JSON ({error.msg})") from None
    return records


def split_seed_tasks(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tuning seeds, held-out seeds), each in file order."""
    seen: Counter[str] = Counter()
    tuning, heldout = [], []
    for record in records:
        seen[record["kind"]] += 1
        (heldout if seen[record["kind"]] % HELDOUT_EVERY == 0 else tuning).append(record)
    return tuning, heldout


def heldout_instructions(path: str | Path = SEED_TASKS) -> list[tuple[str, str]]:
    """(instruction, reference answer) of every held-out seed task."""
    return [(record["query"], record["answer"]) for record in split_seed_tasks(read_jsonl(path))[1]]


def overlaps(texts: Iterable[tuple[str, str]], protected: Iterable[str],
             threshold: float = MAX_SIMILARITY) -> list[tuple[str, str]]:
    """(id, how) of each (id, text) that repeats a protected text: "duplicate" or "similar" (NearDuplicateIndex)."""
    index = NearDuplicateIndex(protected, threshold=threshold)
    return [(name, how) for name, text in texts if (how := index.match(text)) is not None]


def protected_texts(seeds: str | Path = SEED_TASKS, probe: str | Path = PROBE_FILE) -> list[str]:
    """What no tuning data may repeat: the held-out instructions and answers, and the probe's questions."""
    texts = [text for pair in heldout_instructions(seeds) for text in pair]
    return texts + [record["question"] for record in read_jsonl(probe)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.heldout", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=Path, default=SEED_TASKS)
    parser.add_argument("--probe", type=Path, default=PROBE_FILE)
    parser.add_argument("--tuning-seeds", type=Path, default=None, help="write the seeds a pool may grow from here")
    parser.add_argument("--check", type=Path, nargs="*", default=[], metavar="POOL",
                        help="pools (any mm_excitor.delia format) that must not repeat a held-out text")
    args = parser.parse_args(argv)
    if args.tuning_seeds is not None:
        tuning, heldout = split_seed_tasks(read_jsonl(args.seeds))
        atomic_write_jsonl(args.tuning_seeds, tuning)
        print(f"wrote {len(tuning)} tuning seeds to {args.tuning_seeds} ({len(heldout)} held out)")
    if args.check:
        from mm_excitor.delia import load_pool

        protected = protected_texts(args.seeds, args.probe)
        for pool_path in args.check:
            records = load_pool(pool_path).records
            found = overlaps([(f"{r.id} ({field})", getattr(r, field)) for r in records
                              for field in ("query", "answer")], protected)
            if found:
                raise ValueError(f"{pool_path}: {len(found)} record texts repeat held-out text: "
                                 + ", ".join(f"{name} {how}" for name, how in found[:10]))
            print(f"{pool_path}: {len(records)} records, none repeats a held-out instruction or probe question")


if __name__ == "__main__":
    raise SystemExit(run_cli(main, sys.argv[1:]))
