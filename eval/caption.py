"""COCO caption scoring: pycocoevalcap metrics of an official results file (`python -m tasks.generate caption`
writes one from a trained run).

    python -m eval.caption score --results R.json --annotations GT.json [--allow-subset] [--spice] --out DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eval.generation import read_generation_meta
from eval.report import write_caption_report
from mm_excitor.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.caption", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score an official results file")
    score.add_argument("--results", type=Path, required=True, help='[{"image_id": int, "caption": str}]')
    score.add_argument("--annotations", type=Path, required=True, help="COCO-format GT (images, annotations)")
    score.add_argument("--allow-subset", action="store_true",
                       help="score only the images in the results; every output is marked SUBSET n/N")
    score.add_argument("--spice", action="store_true", help="also SPICE (needs its CoreNLP jars, Java 8)")
    score.add_argument("--decoding", type=Path, default=None,
                       help="generation metadata JSON (default: R.meta.json next to the results, if present)")
    score.add_argument("--workdir", type=Path, default=None, help="writable dir for temp files (default: $TMPDIR)")
    score.add_argument("--out", type=Path, required=True, help="report directory")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from eval.caption_metrics import score_captions  # pycocoevalcap: loaded only to score

    decoding, meta = read_generation_meta(args.results, args.decoding)
    scores = score_captions(args.results, args.annotations, allow_subset=args.allow_subset, spice=args.spice,
                            workdir=args.workdir)
    sources = {"results": str(args.results), "annotations": str(args.annotations)}
    if meta is not None:
        sources["decoding"] = str(meta)
    paths = write_caption_report(scores, args.out, decoding=decoding, sources=sources)
    print(paths["scores.md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
