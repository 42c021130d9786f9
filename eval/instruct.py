"""The instruct task's evaluation: held-out answer NLL per token, and the greedy answers to held-out prompts.

- `answer_nll`: the mean negative log-likelihood of every assistant token of the held-out conversations (the
  training labels of data.chat: content and end-of-turn token), under the model with the image or without it.
- `write_answers` / `score_answers_file`: the generations for each conversation up to its last user turn, one JSON
  line `{"id", "prompt", "text"}` each, scored against the held-out answer: exact match after normalisation
  (lower case, punctuation, articles and extra spaces removed; meaningful for short factual answers such as the
  shapes conversations', a floor for free text), mean answer length in words and the share of empty answers.

A measure of what the base model could already do (a capability probe) joins these in
`tasks.instruct.InstructTask.evaluate`, the one place the task's evaluation table is assembled.
"""
from __future__ import annotations

import argparse
import re
import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.cli import add_generate_parser, generate
from mm_excitor.cli import run_cli
from mm_excitor.io import atomic_write_json, atomic_write_jsonl, read_answer_texts

ARTICLES = {"a", "an", "the"}


def answer_nll(model: Any, dataset: Any, collator: Any, batch_size: int) -> dict[str, float]:
    """{"answer_nll": mean NLL per assistant token, "answer_tokens": their count, "conversations": how many were
    scored} over `dataset` (conversations whose first answer does not fit are left out, as in training)."""
    from data.text import IGNORE_INDEX

    total, tokens, rows = 0.0, 0, 0
    items = [item for item in (dataset[i] for i in range(len(dataset))) if item is not None]
    for start in range(0, len(items), batch_size):
        batch = collator(items[start:start + batch_size])
        if batch.num_items == 0:
            continue
        batch = batch.to(model.device)
        total -= float(model.label_log_likelihoods(**batch.inputs).sum())
        tokens += int((batch.inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        rows += batch.num_items
    if tokens == 0:
        raise ValueError("no held-out answer token to score (every conversation too long, or none)")
    return {"answer_nll": total / tokens, "answer_tokens": tokens, "conversations": rows}


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


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m eval.instruct generate --config runs/x --output A.jsonl [--score]`: answers of a trained run."""
    parser = argparse.ArgumentParser(prog="python -m eval.instruct", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(sub, help="answer the held-out conversations with a trained checkpoint (JSON lines)")
    generate("instruct", parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
