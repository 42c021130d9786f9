"""Paraphrased task instructions: one drawn per training example, and a disjoint unseen set for evaluation.

DELIA's released demo phrases the task instruction differently in every training example and evaluates on
phrasings never seen in training, so that a score measures following the task, not matching one string. The sets
ship in ``data/delia/paraphrases_{name}.json`` (hand-written for this project, Apache-2.0):

``{"name", "canonical", "must_contain": [...], "train": [...], "eval": [...]}``

Loading checks that both splits are non-empty, hold no repeats, share no paraphrase (compared as lower-case words,
so punctuation and case do not hide a repeat), that the canonical instruction is a training paraphrase, and that
every paraphrase contains each ``must_contain`` string (e.g. the JSON keys a format-following task asks for).

``choose(example_id, split)`` picks by hashing ``(set name, split, seed, example id)``: the same example gets the
same phrasing in every epoch, process and run, without a shared random stream.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from data.errors import DataError
from mm_excitor.io import read_json

PARAPHRASE_DIR = Path(__file__).resolve().parent / "delia"
SPLITS = ("train", "eval")
EVAL_CHOICES = ("unseen", "canonical")


@dataclass
class ParaphraseConfig:
    """`data.paraphrases` of every task's run config: the task instruction paraphrased per example (None: never)."""

    name: str | None = None
    """A shipped set (`caption`, `shapes_json`) or a set file; its canonical text must be in the task's prompt."""
    eval: str = "unseen"
    """Validation and evaluation prompts: 'unseen' (the set's eval paraphrases, never trained on) or 'canonical'."""
    seed: int = 0
    """Which paraphrase each example gets (`InstructionParaphrases.choose`)."""

    def __post_init__(self) -> None:
        if self.eval not in EVAL_CHOICES:
            raise ValueError(f"data.paraphrases.eval must be one of {EVAL_CHOICES}, got {self.eval!r}")


@dataclass(frozen=True)
class InstructionParaphrases:
    name: str
    canonical: str
    train: tuple[str, ...]
    eval: tuple[str, ...]
    must_contain: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for split in SPLITS:
            texts = getattr(self, split)
            if not texts:
                raise ValueError(f"paraphrase set {self.name!r}: the {split} split is empty")
            seen: dict[str, str] = {}
            for text in texts:
                missing = [m for m in self.must_contain if m not in text]
                if missing:
                    raise ValueError(f"paraphrase set {self.name!r}: {text!r} lacks {missing}")
                if normalised(text) in seen:
                    raise ValueError(f"paraphrase set {self.name!r}: {text!r} repeats {seen[normalised(text)]!r} "
                                     f"in the {split} split")
                seen[normalised(text)] = text
        shared = {normalised(t) for t in self.train} & {normalised(t) for t in self.eval}
        if shared:
            raise ValueError(f"paraphrase set {self.name!r}: train and eval share {sorted(shared)}")
        if normalised(self.canonical) not in {normalised(t) for t in self.train}:
            raise ValueError(f"paraphrase set {self.name!r}: the canonical instruction is not a training paraphrase")

    def choose(self, example_id: str | int, split: str = "train", seed: int = 0) -> str:
        """The paraphrase of `split` for this example: fixed by (name, split, seed, example_id)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        texts = getattr(self, split)
        key = f"{self.name}\x00{split}\x00{seed}\x00{example_id}".encode()
        return texts[int.from_bytes(hashlib.sha256(key).digest()[:8], "little") % len(texts)]


def paraphrase_sets() -> list[str]:
    """Names of the shipped sets (``load_paraphrases(name)``)."""
    return sorted(p.stem.removeprefix("paraphrases_") for p in PARAPHRASE_DIR.glob("paraphrases_*.json"))


def load_paraphrases(name_or_path: str | Path) -> InstructionParaphrases:
    """A shipped set by name (``"caption"``, ``"shapes_json"``) or any file in the same format."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = PARAPHRASE_DIR / f"paraphrases_{name_or_path}.json"
        if not path.is_file():
            raise DataError(path, None, f"no paraphrase set {name_or_path!r}; shipped sets: {paraphrase_sets()}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, None, "expected a JSON object")
    try:
        fields = {key: data[key] for key in ("name", "canonical", "train", "eval")}
    except KeyError as error:
        raise DataError(path, None, f"missing key {error}") from None
    lists = {key: data.get(key, []) for key in ("train", "eval", "must_contain")}
    for key, value in lists.items():
        if not isinstance(value, list) or not all(isinstance(text, str) and text.strip() for text in value):
            raise DataError(path, key, "expected a list of non-empty strings")
    try:
        return InstructionParaphrases(fields["name"], fields["canonical"], tuple(lists["train"]),
                                      tuple(lists["eval"]), tuple(lists["must_contain"]))
    except ValueError as error:
        raise DataError(path, None, str(error)) from None


def normalised(text: str) -> str:
    """Lower-case words only: two phrasings equal under this are the same paraphrase."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))
