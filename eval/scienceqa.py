"""ScienceQA scoring: the letters extracted from the model's answers (`python -m tasks.generate scienceqa` writes
them from a trained run), accuracy with the official breakdown.

    python -m eval.scienceqa score --predictions P --problems problems.json --split test --out DIR
        [--pid-splits pid_splits.json] [--unparsed wrong|random --seed 0]

P is either generations as JSON lines (`question_id` or `pid`, and `text`: LLaVA's answer file) or
`{"results": {pid: index}}` (the official scorer's input).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from data.scienceqa import read_split_ids
from mm_excitor.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json
from eval.generation import read_generation_meta
from eval.report import decoding_section, score_parser, sources_section, subset_banner
from eval.scienceqa_metrics import (
    UNPARSED_POLICIES, ScienceQAInputError, ScienceQAScores, extract_answer, format_official, format_percent,
    score_scienceqa, unparsed_note, write_official_results,
)
from mm_excitor.cli import run_cli


def write_answers(records: list[dict], output: Path) -> None:
    """LLaVA's answer file from merged generation records: JSON lines `{"question_id", "prompt", "text"}`. The raw
    text is kept and the letter is extracted at scoring time, so a better extractor needs no new run."""
    atomic_write_jsonl(output, ({"question_id": r["id"], "prompt": r["prompt"], "text": r["text"]} for r in records))


def write_scienceqa_report(
    scores: ScienceQAScores, out_dir: Path, *, decoding: Mapping[str, object] | None, sources: Mapping[str, str]
) -> dict[str, Path]:
    """Write scienceqa_scores.json and scienceqa_scores.md into `out_dir`."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"scienceqa_{name}" for name in ("scores.json", "scores.md")}
    banner = subset_banner(scores.subset, scores.coverage, "questions")
    note = unparsed_note(scores.unparsed_policy, scores.seed)
    atomic_write_json(paths["scores.json"], {
        "subset": scores.subset,
        "coverage": scores.coverage,
        "banner": banner,
        "split": scores.split,
        "accuracy": {k: a.percent for k, a in scores.categories.items()},
        "counts": {k: {"correct": a.correct, "n": a.n} for k, a in scores.categories.items()},
        "topics": {k: {"accuracy": a.percent, "correct": a.correct, "n": a.n} for k, a in scores.topics.items()},
        "n_unparsed": scores.n_unparsed,
        "unparsed": {"policy": scores.unparsed_policy, "seed": scores.seed, "n": scores.n_unparsed, "note": note},
        "split_size": {"n": scores.n_split, "from": scores.split_file or "problems.json split field (unchecked)"},
        "warnings": list(scores.warnings),
        "decoding": dict(decoding) if decoding is not None else None,
        "sources": dict(sources),
    })
    title = f"ScienceQA {scores.split} accuracy" + (f" (SUBSET {scores.coverage})" if scores.subset else "")
    atomic_write_text(paths["scores.md"], "\n".join([
        f"# {title}", "", f"**{banner}.**", "",
        *(f"**Warning: {w}.**\n" for w in scores.warnings),
        f"Unparsed answers: {scores.n_unparsed}. {note} TXT and IMG overlap: a question with both a hint and an "
        "image counts in each.", "",
        "| " + " | ".join(scores.categories) + " |",
        "|" + " --- |" * len(scores.categories),
        "| " + " | ".join(format_percent(a.percent) for a in scores.categories.values()) + " |",
        "| " + " | ".join(f"{a.correct}/{a.n}" for a in scores.categories.values()) + " |", "",
        "## Per topic", "", "| topic | accuracy | correct/n |", "| --- | --- | --- |",
        *(f"| {t} | {format_percent(a.percent)} | {a.correct}/{a.n} |" for t, a in scores.topics.items()), "",
        *decoding_section(decoding), *sources_section(sources, None),
    ]))
    return paths


def load_predictions(path: Path, problems: Mapping[str, Mapping]) -> tuple[dict[str, int], dict[str, str | None]]:
    """Option indices by pid from an answers JSONL (extracting letters) or a `{"results": ...}` file.

    Also returns the unparsed answers (pid -> raw text, None when the file held indices) so they can be inspected.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and isinstance(whole.get("results"), dict):
        predictions = {str(pid): _index(pid, idx, path) for pid, idx in whole["results"].items()}
        return predictions, {pid: None for pid, idx in predictions.items() if idx == -1}
    predictions: dict[str, int] = {}
    unparsed: dict[str, str | None] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ScienceQAInputError(f"{path}:{n}: neither JSON lines nor {{\"results\": ...}}") from None
        pid = str(row.get("question_id", row.get("pid")))
        if not isinstance(row.get("text"), str) or pid not in problems:
            raise ScienceQAInputError(
                f"{path}:{n}: needs a `question_id` (or `pid`) that is in problems.json, and a `text` (got {pid!r})"
            )
        if pid in predictions:
            raise ScienceQAInputError(f"{path}:{n}: duplicate question_id {pid}")
        predictions[pid] = extract_answer(row["text"], len(problems[pid]["choices"]))
        if predictions[pid] == -1:
            unparsed[pid] = row["text"]
    return predictions, unparsed


def _index(pid: object, value: object, path: Path) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ScienceQAInputError(f"{path}: results[{pid!r}] = {value!r} is not an option index") from None


def build_parser() -> argparse.ArgumentParser:
    parser, score = score_parser("python -m eval.scienceqa", __doc__, "score answers or official results",
                                 "questions")
    score.add_argument("--predictions", type=Path, required=True)
    score.add_argument("--problems", type=Path, required=True, help="ScienceQA problems.json")
    score.add_argument("--split", default="test")
    score.add_argument("--pid-splits", type=Path, default=None,
                       help="ScienceQA pid_splits.json: the split's questions and size (default: next to --problems, "
                       "if present; without it the split is problems.json's `split` field and its size is unchecked)")
    score.add_argument("--unparsed", choices=UNPARSED_POLICIES, default="wrong",
                       help="unparsed answers: 'wrong' (LLaVA's scorer, default) or 'random' (a seeded random option, "
                       "the ScienceQA authors' run_gpt3.py)")
    score.add_argument("--seed", type=int, default=0, help="seed of --unparsed random")
    score.add_argument("--decoding", type=Path, default=None,
                       help="generation metadata JSON (default: P.meta.json next to the predictions, if present)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    score_predictions_file(args.predictions, args.problems, args.out, split=args.split,
                           allow_subset=args.allow_subset, decoding_file=args.decoding,
                           pid_splits=args.pid_splits, unparsed=args.unparsed, seed=args.seed)


def score_predictions_file(predictions_path: Path, problems_path: Path, out_dir: Path, *, split: str = "test",
                           allow_subset: bool = False, decoding_file: Path | None = None,
                           pid_splits: Path | None = None, unparsed: str = "wrong", seed: int = 0):
    """Score a predictions file and write the official results, the unparsed answers and the report.

    The split's questions come from `pid_splits` (default: pid_splits.json next to problems.json, if present);
    warnings (a problems.json without all of them, no pid_splits.json) go to stderr and into the report.
    """
    problems = read_json(problems_path)
    if not isinstance(problems, dict):
        raise ScienceQAInputError(f"{problems_path}: problems.json is a JSON object keyed by pid")
    if pid_splits is None and (Path(problems_path).parent / "pid_splits.json").is_file():
        pid_splits = Path(problems_path).parent / "pid_splits.json"
    split_ids = read_split_ids(pid_splits, split) if pid_splits is not None else None
    decoding, meta = read_generation_meta(predictions_path, decoding_file)
    predictions, unparsed_texts = load_predictions(predictions_path, problems)
    scores = score_scienceqa(predictions, problems, split=split, allow_subset=allow_subset, split_ids=split_ids,
                             split_file=str(pid_splits) if pid_splits is not None else None, unparsed=unparsed,
                             seed=seed)
    out_dir = Path(out_dir)
    banner = subset_banner(scores.subset, scores.coverage, "questions")
    official = out_dir / "scienceqa_results.json"
    write_official_results(scores.predictions, official, subset_note=banner if scores.subset else None)
    unparsed_path = out_dir / "scienceqa_unparsed.jsonl"
    atomic_write_jsonl(unparsed_path, ({"question_id": pid, "text": t} for pid, t in unparsed_texts.items()))
    sources = {"predictions": str(predictions_path), "problems": str(problems_path)}
    if pid_splits is not None:
        sources["pid_splits"] = str(pid_splits)
    if meta is not None:
        sources["decoding"] = str(meta)
    paths = write_scienceqa_report(scores, out_dir, decoding=decoding, sources=sources)
    for warning in scores.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(banner)
    print(format_official(scores))
    policy = "counted wrong" if scores.unparsed_policy == "wrong" else f"a random option, seed {scores.seed}"
    print(f"unparsed answers ({policy}): {scores.n_unparsed}. {unparsed_note(scores.unparsed_policy, scores.seed)}")
    print("wrote " + ", ".join(str(p) for p in [official, unparsed_path, *paths.values()]))
    return scores


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
