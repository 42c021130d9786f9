"""The shapes_json task's scorer and CLI: format validity and answer accuracy of JSON answers (no torch).

    python -m eval.shapes_json score --predictions answers.jsonl --annotations dataset_coco.json --split test --out R
    python -m tasks.generate shapes_json --config runs/x --output runs/x/eval-cli/answers.jsonl [--score]

A generated text is **valid** when, stripped of surrounding whitespace, it parses as a JSON object whose keys are
exactly "colour" and "shape" (anything before or after the object makes it invalid: the task is to answer in the
format, nothing else). It is **accurate** when it is valid and both values equal the truth (compared stripped and
lower-case); colour % and shape % count each value of valid answers alone. All are percentages of the split.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from eval.report import score_parser
from mm_excitor.cli import run_cli
from mm_excitor.io import atomic_write_json, atomic_write_jsonl, read_answer_texts

KEYS = ("colour", "shape")


def write_answers(records: list[dict], output: Path) -> None:
    """The official answer file from merged generation records: JSON lines `{"image_id", "prompt", "text"}` with
    the raw text (parsed at scoring time)."""
    atomic_write_jsonl(output, ({"image_id": r["id"], "prompt": r["prompt"], "text": r["text"]} for r in records))


def parse_answer(text: str) -> dict[str, str] | None:
    """The answer object if `text` is valid (see the module doc), else None."""
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or sorted(value) != sorted(KEYS) or not all(isinstance(value[k], str) for k in KEYS):
        return None
    return value


@dataclass(frozen=True)
class ShapesJsonScores:
    n: int
    valid: float
    accuracy: float
    colour: float
    shape: float

    def metrics(self) -> dict[str, float]:
        """Headline metrics in percent, as reported."""
        return {"valid": self.valid, "accuracy": self.accuracy, "colour": self.colour, "shape": self.shape}


def score_answers(texts: Mapping[int, str], truth: Mapping[int, tuple[str, str]],
                  allow_subset: bool = False) -> ShapesJsonScores:
    """Scores of generated `texts` (image id -> text) against `truth` (image id -> (colour, shape))."""
    missing, extra = set(truth) - set(texts), set(texts) - set(truth)
    if extra:
        raise ValueError(f"answers for {len(extra)} image(s) outside the split, e.g. {sorted(extra)[:3]}")
    if missing and not allow_subset:
        raise ValueError(f"{len(missing)} of {len(truth)} images have no answer, e.g. {sorted(missing)[:3]} "
                         "(allow_subset scores the answered ones)")
    if not texts:
        raise ValueError("no answers to score")
    counts = dict.fromkeys(("valid", "accuracy", "colour", "shape"), 0)
    for image_id, text in texts.items():
        answer = parse_answer(text)
        if answer is None:
            continue
        right = [answer[k].strip().lower() == want for k, want in zip(KEYS, truth[image_id])]
        counts["valid"] += 1
        counts["colour"] += right[0]
        counts["shape"] += right[1]
        counts["accuracy"] += all(right)
    n = len(texts)
    return ShapesJsonScores(n, **{name: 100 * value / n for name, value in counts.items()})


def read_answers(path: Path) -> dict[int, str]:
    """image id -> text of an answer file written by write_answers."""
    return read_answer_texts(path, "image_id", int)


def score_answers_file(predictions: Path, truth: Mapping[int, tuple[str, str]], out_dir: Path,
                       allow_subset: bool = False) -> ShapesJsonScores:
    """Score an answer file and write `shapes_json_scores.json` into `out_dir`."""
    scores = score_answers(read_answers(predictions), truth, allow_subset)
    atomic_write_json(Path(out_dir) / "shapes_json_scores.json",
                      {**asdict(scores), "predictions": str(predictions), "subset": scores.n < len(truth)})
    return scores


def build_parser() -> argparse.ArgumentParser:
    parser, score = score_parser("python -m eval.shapes_json", __doc__, "score an answer file", "images")
    score.add_argument("--predictions", type=Path, required=True)
    score.add_argument("--annotations", type=Path, required=True, help="the shapes set's Karpathy dataset_coco.json")
    score.add_argument("--split", default="test")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from data.shapes_json import load_shapes_json

    truth = {e.image_id: (e.colour, e.shape) for e in load_shapes_json(args.annotations, ".", args.split)}
    scores = score_answers_file(args.predictions, truth, args.out, args.allow_subset)
    print(json.dumps(scores.metrics()))


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
