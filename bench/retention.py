"""The retention columns of a comparison (bench/compare.py): what tuning did to the language model's text-only
abilities, as the Excitor paper asks of every method.

Each compared run's final adapter and the frozen base LM (scored once per comparison) are scored text-only, without
images, by eval/probe.py: the capability probe's accuracy (data/probe/probe.jsonl, per category too) and the answer
NLL per token of the held-out human-written instructions (data/heldout.py). Each row gets its change against the
base: probe accuracy in points, NLL in percent. A run's scores are kept in ``<run>/retention.json`` and the base's in
``<out>/retention-base.json``, each with the probe file's sha256 and what was scored, so a rerun comparison reuses
them and a changed probe or checkpoint is scored again.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mm_excitor.integrity import file_sha256
from mm_excitor.io import atomic_write_json, read_json

RUN_FILE = "retention.json"
BASE_FILE = "retention-base.json"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cached(path: Path, key: dict[str, Any], score: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`score()`, kept in `path` and reused while `key` (what the scores depend on) is the same."""
    if path.is_file():
        stored = read_json(path)
        if stored.get("key") == key:
            return stored["scores"]
    scores = score()
    atomic_write_json(path, {"key": key, "scores": scores})
    return scores


def probe_questions(probe_file: Path, per_category: int | None = None) -> list[dict[str, Any]]:
    """The probe's questions, only the first `per_category` of each category when given (a documented subset)."""
    from eval.probe import load_probe

    questions = load_probe(probe_file)
    if per_category is None:
        return questions
    taken: dict[str, int] = {}
    kept = []
    for question in questions:
        taken[question["category"]] = taken.get(question["category"], 0) + 1
        if taken[question["category"]] <= per_category:
            kept.append(question)
    return kept


def probe_key(probe_file: Path, per_category: int | None) -> dict[str, Any]:
    """What the probe scores depend on: the probe file, and the subset when only one is scored."""
    key: dict[str, Any] = {"probe_sha256": file_sha256(probe_file)}
    if per_category is not None:
        key["probe_per_category"] = per_category
    return key


def _scores(model: Any, tokenizer: Any, questions: list[dict[str, Any]]) -> dict[str, Any]:
    from eval.probe import retention

    result = retention(model, tokenizer, questions)
    return {"probe_accuracy": result["probe"]["accuracy"], "probe_chance": result["probe"]["chance"],
            "probe_categories": {c: s["accuracy"] for c, s in result["probe"]["categories"].items()},
            "heldout_nll": result["heldout_nll"]}


def run_scores(task: str, run_dir: Path, probe_file: Path, per_category: int | None = None) -> dict[str, Any]:
    """The text-only scores of a run's latest adapter (the probe's first `per_category` questions of each category
    when given)."""
    from tasks.probe import load_text_run
    from tasks.run import resolve_checkpoint

    checkpoint = resolve_checkpoint(run_dir)
    key = {"checkpoint": checkpoint.name, **probe_key(probe_file, per_category)}
    return cached(Path(run_dir) / RUN_FILE, key, lambda: _scores(
        *load_text_run(task, run_dir, _device()), probe_questions(probe_file, per_category)))


def base_scores(task: str, run_dir: Path, out: Path, probe_file: Path,
                per_category: int | None = None) -> dict[str, Any]:
    """The text-only scores of the frozen LM that the run at `run_dir` tuned."""
    from eval.probe import load_base
    from tasks import get_task
    from tasks.run import read_run_config

    model_config = read_run_config(get_task(task), run_dir).model
    key = {"language_model": str(model_config.language_model), "dtype": model_config.dtype,
           **probe_key(probe_file, per_category)}
    return cached(Path(out) / BASE_FILE, key, lambda: _scores(
        *load_base(model_config.language_model, model_config.dtype, _device()),
        probe_questions(probe_file, per_category)))


def add_changes(rows: list[dict[str, Any]], base: dict[str, Any]) -> None:
    """Each row's change against the frozen base: probe accuracy in points, held-out NLL in percent."""
    for row in rows:
        row["probe_change"] = row["probe_accuracy"] - base["probe_accuracy"]
        row["heldout_nll_change_pct"] = 100 * (row["heldout_nll"] / base["heldout_nll"] - 1)


def header() -> list[str]:
    return ["probe acc (vs base)", "held-out NLL (vs base)"]


def cells(row: dict[str, Any]) -> list[str]:
    """The row's probe accuracy and held-out NLL (± their spread over seeds) and their changes against the base."""
    spread = row.get("spread", {})

    def value(key: str, digits: int) -> str:
        return f"{row[key]:.{digits}f}" + (f" ± {spread[key]:.{digits}f}" if spread.get(key) else "")

    return [f"{value('probe_accuracy', 1)} ({row['probe_change']:+.1f})",
            f"{value('heldout_nll', 3)} ({row['heldout_nll_change_pct']:+.1f}%)"]


def markdown_lines(results: dict[str, Any]) -> list[str]:
    """The frozen base's scores and the probe per category for every row, under the comparison's table."""
    base = results["retention_base"]
    categories = list(base["probe_categories"])
    lines = ["", f"Retention, text-only (no images): the frozen base LM scores {base['probe_accuracy']:.1f} on the "
             f"capability probe (chance {base['probe_chance']:.1f}) and {base['heldout_nll']:.3f} held-out "
             "instruction NLL per answer token (eval/probe.py). Probe accuracy per category:", "",
             "| model | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories),
             "| frozen base | " + " | ".join(f"{base['probe_categories'][c]:.1f}" for c in categories) + " |"]
    for row in results["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(
            f"{row['probe_categories'][c]:.1f} ({row['probe_categories'][c] - base['probe_categories'][c]:+.1f})"
            for c in categories) + " |")
    return lines

