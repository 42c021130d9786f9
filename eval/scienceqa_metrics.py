"""ScienceQA answer extraction and accuracy with the official breakdown (lupantech/ScienceQA evaluate_acc.py).

Categories follow the official scorer: NAT/SOC/LAN by `subject`; TXT = bool(hint), IMG = bool(image),
NO = neither (TXT and IMG overlap); G1-6 / G7-12 by `grade`; Avg over all scored questions. An answer that cannot
be parsed is index -1, counts as wrong and is counted.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from eval.files import format_ids, write_json_atomic

CATEGORIES = ("Avg", "NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
_SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
_GRADES = {f"grade{g}": "G1-6" if g <= 6 else "G7-12" for g in range(1, 13)}
_OFFICIAL_KEYS = {"NAT": "natural", "SOC": "social", "LAN": "language", "TXT": "has_text", "IMG": "has_image",
                  "NO": "no_context", "G1-6": "grade_1_6", "G7-12": "grade_7_12", "Avg": "average"}
_PREFIX = re.compile(r"^(?:([A-Z])\.|\(([A-Z])\))(?!\w)")
_THE_ANSWER_IS = re.compile(r"The answer is \(?([A-Z])\)?(?![A-Za-z])")


class ScienceQAInputError(ValueError):
    """Predictions that cannot be scored against the split as given; the message names the offending pids."""


def extract_answer(text: str, num_choices: int) -> int:
    """The chosen option's index, or -1 if the text names no valid option.

    Same order as LLaVA's scorer: the whole answer is one letter ("A"); it starts with "A." or "(A)"; it contains
    exactly one "The answer is A". The first rule that matches decides; a letter past the last option is -1.
    Unlike LLaVA's regex, "The answer is Alaska" does not read as A, and "(A)" / a missing final period are fine.
    """
    text = text.strip()
    letter = None
    if len(text) == 1 and text in string.ascii_uppercase:
        letter = text
    elif m := _PREFIX.match(text):
        letter = m.group(1) or m.group(2)
    elif len(found := _THE_ANSWER_IS.findall(text)) == 1:
        letter = found[0]
    if letter is None:
        return -1
    index = string.ascii_uppercase.index(letter)
    return index if index < num_choices else -1


@dataclass(frozen=True)
class Accuracy:
    """Correct out of n; `percent` is None for an empty category (the official scorer divides by zero there)."""

    correct: int
    n: int

    @property
    def percent(self) -> float | None:
        return 100.0 * self.correct / self.n if self.n else None


@dataclass(frozen=True)
class ScienceQAScores:
    """Accuracy per official category and per topic, with the unparsed count and the subset marker."""

    split: str
    categories: dict[str, Accuracy]
    topics: dict[str, Accuracy]
    n_unparsed: int
    n_scored: int
    n_split: int
    subset: bool

    @property
    def coverage(self) -> str:
        return f"{self.n_scored}/{self.n_split}"


def problem_categories(problem: Mapping) -> list[str]:
    """The official categories one problem counts in (a problem with a hint and an image is in TXT and IMG)."""
    cats = ["Avg"]
    if problem.get("subject") in _SUBJECTS:
        cats.append(_SUBJECTS[problem["subject"]])
    if problem.get("hint"):
        cats.append("TXT")
    if problem.get("image"):
        cats.append("IMG")
    if not problem.get("hint") and not problem.get("image"):
        cats.append("NO")
    if problem.get("grade") in _GRADES:
        cats.append(_GRADES[problem["grade"]])
    return cats


def split_problems(problems: Mapping[str, Mapping], split: str) -> dict[str, Mapping]:
    """The problems of one split, selected by their `split` field as the official scorer does."""
    selected = {pid: p for pid, p in problems.items() if p.get("split") == split}
    if not selected:
        raise ScienceQAInputError(f"no problem has split == {split!r}")
    return selected


def score_scienceqa(
    predictions: Mapping[str, int], problems: Mapping[str, Mapping], split: str = "test", allow_subset: bool = False
) -> ScienceQAScores:
    """Accuracy of predicted option indices (pid -> index, -1 = unparsed) on `split` of the official problems.json.

    Every question of the split must be predicted unless `allow_subset` (then the scores are marked SUBSET n/N):
    the published numbers are over all 4,241 test questions.
    """
    selected = split_problems(problems, split)
    unknown = [pid for pid in predictions if pid not in selected]
    if unknown:
        raise ScienceQAInputError(
            f"{len(unknown)} predicted pid(s) are not in the {split} split: {format_ids(unknown)}"
        )
    bad = [pid for pid, idx in predictions.items()
           if type(idx) is not int or not -1 <= idx < len(selected[pid]["choices"])]
    if bad:
        raise ScienceQAInputError(
            f"{len(bad)} prediction(s) are not an option index (or -1 for unparsed): "
            + ", ".join(f"{pid}: {predictions[pid]!r}" for pid in bad[:10])
        )
    missing = [pid for pid in selected if pid not in predictions]
    if missing and not allow_subset:
        raise ScienceQAInputError(
            f"{len(missing)} of {len(selected)} {split} questions have no prediction: {format_ids(missing)}. "
            "Score the whole split, or allow a subset (allow_subset=True / --allow-subset): it is marked SUBSET."
        )
    correct = {c: 0 for c in CATEGORIES}
    total = {c: 0 for c in CATEGORIES}
    topic_correct: dict[str, int] = {}
    topic_total: dict[str, int] = {}
    for pid, problem in selected.items():
        if pid not in predictions:
            continue
        right = predictions[pid] == problem["answer"]
        for c in problem_categories(problem):
            total[c] += 1
            correct[c] += right
        topic = str(problem.get("topic", "unknown"))
        topic_total[topic] = topic_total.get(topic, 0) + 1
        topic_correct[topic] = topic_correct.get(topic, 0) + right
    return ScienceQAScores(
        split=split,
        categories={c: Accuracy(correct[c], total[c]) for c in CATEGORIES},
        topics={t: Accuracy(topic_correct[t], topic_total[t]) for t in sorted(topic_total)},
        n_unparsed=sum(1 for idx in predictions.values() if idx == -1),
        n_scored=len(predictions),
        n_split=len(selected),
        subset=bool(missing),
    )


def write_official_results(predictions: Mapping[str, int], path: Path, *, subset_note: str | None = None) -> None:
    """Write `{"results": {pid: index}}`, the input of the official evaluate_acc.py (and LLaVA's output).

    A subset also gets a "subset" key: the official scorer ignores it, a reader does not.
    """
    payload: dict[str, object] = {"results": dict(predictions)}
    if subset_note is not None:
        payload["subset"] = subset_note
    write_json_atomic(payload, path)


def format_official(scores: ScienceQAScores) -> str:
    """The printout of the official evaluate_acc.py (`natural: \\t90.12` ... then the LaTeX row)."""
    values = {k: format_percent(scores.categories[k].percent) for k in _OFFICIAL_KEYS}
    lines = [f"{_OFFICIAL_KEYS[k]}: \t{v}" for k, v in values.items()]
    return "\n".join([*lines, "".join(f"& {v} " for v in values.values()) + "\\\\"])


def format_percent(value: float | None) -> str:
    """Two decimals like the official scorer; "n/a" for an empty category."""
    return "n/a" if value is None else f"{value:.2f}"
