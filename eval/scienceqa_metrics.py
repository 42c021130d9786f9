"""ScienceQA answer extraction and accuracy with the official breakdown (lupantech/ScienceQA evaluate_acc.py).

Categories follow the official scorer: NAT/SOC/LAN by `subject`; TXT = bool(hint), IMG = bool(image),
NO = neither (TXT and IMG overlap); G1-6 / G7-12 by `grade`; Avg over all scored questions.

Unparsed answers: the two reference scorers differ, and the policy is recorded in every report.
- lupantech/ScienceQA `models/run_gpt3.py` (the authors' GPT-3 runs): `re.compile(r'The answer is ([A-Z]).')`,
  `findall`, exactly one match gives the letter, anything else is "FAILED"; `get_pred_idx` then returns the
  letter's index if it is among the options, else `random.choice(range(len(choices)))`, with `random.seed(args.seed)`
  (default 10) set once at start. `tools/evaluate_acc.py` only compares the stored indices with the answers.
- haotian-liu/LLaVA `llava/eval/eval_science_qa.py`: the exact letter, a leading "X. ", else the same regex with
  exactly one match; "FAILED" maps to -1, i.e. wrong (`return -1` precedes the `random.choice` line, which is
  dead code; LLaVA's first release, commit 8959d5c, still drew the random option, unseeded). Questions of the
  split with no prediction count as "FAILED" too.
Here the default is LLaVA's (`wrong`); `random` is the authors' fallback with a seeded `random.Random(seed)`, drawn
in split order (their global stream also fed the few-shot sampling, so their exact draws cannot be replayed).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mm_excitor.cli import format_ids
from mm_excitor.io import atomic_write_json

UNPARSED_POLICIES = ("wrong", "random")
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
    """Accuracy per official category and per topic, with the unparsed count and policy and the subset marker.

    `n_split` is the size of the split: pid_splits.json's list when given, else the problems whose `split` field is
    the split. `predictions` are the indices scored (unparsed ones drawn when the policy is `random`); `warnings`
    say why a number may not be what it seems (a problems.json that lacks questions of the split).
    """

    split: str
    categories: dict[str, Accuracy]
    topics: dict[str, Accuracy]
    n_unparsed: int
    n_scored: int
    n_split: int
    subset: bool
    unparsed_policy: str = "wrong"
    seed: int | None = None
    predictions: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    split_file: str | None = None

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


def unparsed_note(policy: str, seed: int | None) -> str:
    """One sentence for reports: how unparsed answers were scored and how the other convention differs."""
    if policy == "random":
        return (f"Unparsed answers get a random option (random.Random({seed}), in split order), as the ScienceQA "
                "authors' run_gpt3.py does; LLaVA's scorer counts them wrong (the default, --unparsed wrong).")
    return ("Unparsed answers count as wrong (LLaVA's eval_science_qa.py); the ScienceQA authors' run_gpt3.py picks "
            "a random option instead (--unparsed random --seed S).")


def score_scienceqa(
    predictions: Mapping[str, int],
    problems: Mapping[str, Mapping],
    split: str = "test",
    allow_subset: bool = False,
    *,
    split_ids: Sequence[str] | None = None,
    split_file: str | None = None,
    unparsed: str = "wrong",
    seed: int = 0,
) -> ScienceQAScores:
    """Accuracy of predicted option indices (pid -> index, -1 = unparsed) on `split` of the official problems.json.

    The split is pid_splits.json's list `split_ids` when given (read from `split_file`), else the problems whose
    `split` field is `split`. Every question of the split must be predicted unless `allow_subset`; the scores are
    then marked SUBSET n/N, as they are (with a warning) when problems.json lacks questions of pid_splits' list: the
    published numbers are over all 4,241 test questions. Unparsed answers count as wrong, or with `unparsed="random"`
    get a random option drawn from `random.Random(seed)` in split order (module docstring).
    """
    if unparsed not in UNPARSED_POLICIES:
        raise ScienceQAInputError(f"unparsed policy {unparsed!r}: expected one of {', '.join(UNPARSED_POLICIES)}")
    warnings: list[str] = []
    if split_ids is None:
        selected = split_problems(problems, split)
        n_split = len(selected)
        warnings.append(f"no pid_splits.json given: the {split} split is problems.json's `split` field, and its "
                        "size is not checked against the official split")
    else:
        selected = {pid: problems[pid] for pid in split_ids if pid in problems}
        n_split = len(split_ids)
        absent = [pid for pid in split_ids if pid not in problems]
        if absent:
            warnings.append(f"problems.json holds {len(selected)} of the {n_split} {split} questions of "
                            f"{split_file or 'pid_splits.json'} (missing: {format_ids(absent)}): not the full split")
        others = [pid for pid, p in problems.items() if p.get("split") == split and pid not in selected]
        if others:
            warnings.append(f"{len(others)} problems of problems.json have split == {split!r} but are not in "
                            f"{split_file or 'pid_splits.json'} (not scored): {format_ids(others)}")
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
    scored = _resolve_unparsed(predictions, selected, unparsed, seed)
    correct = {c: 0 for c in CATEGORIES}
    total = {c: 0 for c in CATEGORIES}
    topic_correct: dict[str, int] = {}
    topic_total: dict[str, int] = {}
    for pid, problem in selected.items():
        if pid not in scored:
            continue
        right = scored[pid] == problem["answer"]
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
        n_split=n_split,
        subset=len(predictions) < n_split,
        unparsed_policy=unparsed,
        seed=seed if unparsed == "random" else None,
        predictions=scored,
        warnings=tuple(warnings),
        split_file=split_file,
    )


def _resolve_unparsed(
    predictions: Mapping[str, int], selected: Mapping[str, Mapping], policy: str, seed: int
) -> dict[str, int]:
    """The indices to score, in split order: -1 stays (wrong) or becomes the authors' random option."""
    rng = random.Random(seed)
    scored = {}
    for pid, problem in selected.items():
        if pid in predictions:
            idx = predictions[pid]
            if idx == -1 and policy == "random":
                idx = rng.choice(range(len(problem["choices"])))
            scored[pid] = idx
    return scored


def write_official_results(predictions: Mapping[str, int], path: Path, *, subset_note: str | None = None) -> None:
    """Write `{"results": {pid: index}}`, the input of the official evaluate_acc.py (and LLaVA's output).

    A subset also gets a "subset" key: the official scorer ignores it, a reader does not.
    """
    payload: dict[str, object] = {"results": dict(predictions)}
    if subset_note is not None:
        payload["subset"] = subset_note
    atomic_write_json(path, payload)


def format_official(scores: ScienceQAScores) -> str:
    """The printout of the official evaluate_acc.py (`natural: \\t90.12` ... then the LaTeX row)."""
    values = {k: format_percent(scores.categories[k].percent) for k in _OFFICIAL_KEYS}
    lines = [f"{_OFFICIAL_KEYS[k]}: \t{v}" for k, v in values.items()]
    return "\n".join([*lines, "".join(f"& {v} " for v in values.values()) + "\\\\"])


def format_percent(value: float | None) -> str:
    """Two decimals like the official scorer; "n/a" for an empty category."""
    return "n/a" if value is None else f"{value:.2f}"
