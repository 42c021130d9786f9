"""The instruct task's scoring (no torch): the greedy answers to held-out prompts against the held-out answers.

- `write_answers` / `score_answers_file`: the generations for each conversation up to its last user turn, one JSON
  line `{"id", "prompt", "text"}` each, scored against the held-out answer: exact match after normalisation
  (lower case, punctuation, articles and extra spaces removed; meaningful for short factual answers such as the
  shapes conversations', a floor for free text), mean answer length in words and the share of empty answers.

The held-out answer NLL per token (a model pass, `tasks.instruct.answer_nll`) and a measure of what the base model
could already do (a capability probe) join these in `tasks.instruct.InstructTask.evaluate`, the one place the
task's evaluation table is assembled.
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping
from pathlib import Path

from mm_excitor.io import atomic_write_json, atomic_write_jsonl, read_answer_texts

ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    words = text.lower().translate(str.maketrans("", "", string.punctuation)).split()
    return " ".join(w for w in words if w not in ARTICLES)


def write_answers(records: list[dict], path: Path) -> None:
    """The generation records as JSON lines `{"id", "prompt", "text"}`, in dataset order."""
    atomic_write_jsonl(path, [{"id": r["id"], "prompt": r["prompt"], "text": r["text"]} for r in records])


def read_answers(path: Path) -> dict[str, str]:
    """id -> text of an answer file written by write_answers."""
    return read_answer_texts(path, "id", str)


def score_answers_file(outputs: Path, references: Mapping[str, str], out_dir: Path,
                       allow_subset: bool = False) -> dict[str, float]:
    """Exact match (%), mean words and empty share (%) of the answers in `outputs` against `references` (id ->
    held-out answer); the per-answer verdicts go to `out_dir/instruct_scores.json`."""
    by_id = read_answers(outputs)
    unknown = sorted(set(by_id) - set(references))
    if unknown:
        raise ValueError(f"{outputs}: answers for ids not in the evaluation set: {unknown[:5]}")
    missing = sorted(set(references) - set(by_id))
    if missing and not allow_subset:
        raise ValueError(f"{outputs}: no answer for {len(missing)} evaluation conversation(s), e.g. {missing[:5]}")
    verdicts = [{"id": i, "text": text, "reference": references[i],
                 "exact": normalize_answer(text) == normalize_answer(references[i])} for i, text in by_id.items()]
    n = max(len(verdicts), 1)
    metrics = {"exact_match": 100 * sum(v["exact"] for v in verdicts) / n,
               "answer_words": sum(len(v["text"].split()) for v in verdicts) / n,
               "empty": 100 * sum(not re.sub(r"\s", "", v["text"]) for v in verdicts) / n}
    atomic_write_json(Path(out_dir) / "instruct_scores.json", {"metrics": metrics, "answers": verdicts})
    return metrics
