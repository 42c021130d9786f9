"""ScienceQA: ``problems.json`` + ``pid_splits.json`` + ``images/{split}/{pid}/image.png`` into typed problems.

The breakdown fields of the official scorer (subject, grade, hint/image flags, topic) are kept on every problem
so that evaluation can report NAT/SOC/LAN, TXT/IMG/NO, G1-6/G7-12 and per-topic accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.errors import DataError, image_under_root
from data.prompts import OPTION_LETTERS, SCIENCEQA_FORMATS, scienceqa_example
from mm_excitor.io import read_json

SPLITS = ("train", "val", "test", "trainval", "minitrain", "minival", "minitest")
# The problem-level ``split`` field each split name may contain; images live under that folder.
_BASE_SPLITS = {"train": {"train"}, "val": {"val"}, "test": {"test"}, "trainval": {"train", "val"},
                "minitrain": {"train"}, "minival": {"val"}, "minitest": {"test"}}
_TEXT_FIELDS = ("question", "hint", "subject", "grade", "topic", "category", "lecture", "solution", "split")


@dataclass(frozen=True)
class ScienceQAProblem:
    """One ScienceQA question. ``image_key`` is the image path relative to the image root (POSIX), the key of a
    visual feature cache; both image fields are None for questions without an image."""

    pid: str
    question: str
    choices: list[str]
    answer: int
    hint: str
    image_path: Path | None
    image_key: str | None
    subject: str
    grade: str
    topic: str
    category: str
    lecture: str
    solution: str
    split: str

    @property
    def has_text(self) -> bool:
        """TXT in the official scorer: the question has a text context (hint)."""
        return bool(self.hint)

    @property
    def has_image(self) -> bool:
        """IMG in the official scorer: the question has an image context."""
        return self.image_key is not None

    @property
    def answer_letter(self) -> str:
        return OPTION_LETTERS[self.answer]


def load_scienceqa(root: str | Path, split: str, image_root: str | Path | None = None) -> list[ScienceQAProblem]:
    """Problems of ``split`` (one of SPLITS, or any other key of pid_splits.json), in the order of pid_splits.json.

    ``root`` holds ``problems.json`` and ``pid_splits.json``; images are under ``image_root`` (default
    ``root/images``) at ``{problem split}/{pid}/{image}``: the problem's own split, so trainval and the mini
    splits find their images too. Image files are checked by the datasets, not here.
    """
    root = Path(root)
    image_root = root / "images" if image_root is None else Path(image_root)
    splits_file, problems_file = root / "pid_splits.json", root / "problems.json"
    pids = read_split_ids(splits_file, split)
    problems = read_json(problems_file)
    if not isinstance(problems, dict):
        raise DataError(problems_file, None, "expected an object {pid: problem}")
    out = []
    for pid in pids:
        if pid not in problems:
            raise DataError(splits_file, f"split {split!r} pid {pid}", "pid is not in problems.json")
        problem = parse_problem(pid, problems[pid], problems_file, image_root)
        if split in _BASE_SPLITS and problem.split not in _BASE_SPLITS[split]:
            raise DataError(problems_file, f"pid {pid}",
                            f"listed in split {split!r} of pid_splits.json but its own split is {problem.split!r}")
        out.append(problem)
    return out


def read_split_ids(splits_file: str | Path, split: str) -> list[str]:
    """The problem ids of ``split`` in ``pid_splits.json``, in file order, as strings (the keys of problems.json)."""
    pid_splits = read_json(splits_file)
    if not isinstance(pid_splits, dict):
        raise DataError(splits_file, None, "expected an object {split: [pid, ...]}")
    if split not in pid_splits:
        known = ", ".join(sorted(pid_splits))
        raise DataError(splits_file, f"split {split!r}", f"no such split; the file has: {known}")
    pids = pid_splits[split]
    if not isinstance(pids, list):
        raise DataError(splits_file, f"split {split!r}", "expected a list of problem ids")
    return [str(pid) for pid in pids]


def parse_problem(pid: str, record: object, file: str | Path, image_root: str | Path) -> ScienceQAProblem:
    """Validate one record of problems.json; every error names the file and the pid."""
    rec = f"pid {pid}"
    if not isinstance(record, dict):
        raise DataError(file, rec, f"record is a {type(record).__name__}, not an object")
    for name in (*_TEXT_FIELDS, "choices", "answer", "image"):
        if name not in record:
            raise DataError(file, rec, f"missing field '{name}'")
    for name in _TEXT_FIELDS:
        if not isinstance(record[name], str):
            raise DataError(file, rec, f"'{name}' must be a string, got {record[name]!r}")
    for name in ("question", "split"):
        if not record[name].strip():
            raise DataError(file, rec, f"empty '{name}'")
    choices = record["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(file, rec, f"'choices' must be a list of at least 2 strings, got {choices!r}")
    if len(choices) > len(OPTION_LETTERS):
        raise DataError(file, rec, f"{len(choices)} choices: more than {len(OPTION_LETTERS)} option letters")
    answer = record["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise DataError(file, rec, f"'answer' must be an integer index, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise DataError(file, rec, f"answer index {answer} out of range for {len(choices)} choices")
    image = record["image"]
    if image is not None and not isinstance(image, str):
        raise DataError(file, rec, f"'image' must be a file name or null, got {image!r}")
    parts = (record["split"], pid, image) if image else None
    return ScienceQAProblem(
        pid=pid, question=record["question"], choices=list(choices), answer=answer, hint=record["hint"],
        image_path=image_under_root(image_root, parts, file, rec) if parts else None,
        image_key="/".join(parts) if parts else None,
        subject=record["subject"], grade=record["grade"], topic=record["topic"], category=record["category"],
        lecture=record["lecture"], solution=record["solution"], split=record["split"],
    )


def build_example(problem: ScienceQAProblem, fmt: str = "QCM-A") -> tuple[str, str]:
    """(prompt, target) of a problem in one of SCIENCEQA_FORMATS (QCM-A by default)."""
    return scienceqa_example(problem.question, problem.hint, problem.choices, problem.answer,
                             problem.lecture, problem.solution, fmt)


def problem_meta(problem: ScienceQAProblem) -> dict:
    """What the evaluator needs to score and break down accuracy (plain types, picklable)."""
    return {
        "pid": problem.pid, "answer": problem.answer, "answer_letter": problem.answer_letter,
        "n_choices": len(problem.choices), "subject": problem.subject, "grade": problem.grade,
        "topic": problem.topic, "category": problem.category, "has_text": problem.has_text,
        "has_image": problem.has_image, "split": problem.split,
    }


__all__ = ["SPLITS", "SCIENCEQA_FORMATS", "ScienceQAProblem", "load_scienceqa", "read_split_ids", "parse_problem",
           "build_example", "problem_meta"]
