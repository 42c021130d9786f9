"""COCO caption scoring: pycocoevalcap metrics of an official results file (`python -m tasks.generate caption`
writes one from a trained run).

    python -m eval.caption score --results R.json --annotations GT.json [--allow-subset] [--spice] --out DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from eval.generation import read_generation_meta
from eval.report import decoding_section, score_parser, sources_section, subset_banner
from mm_excitor.cli import run_cli
from mm_excitor.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # scoring's imports (pycocoevalcap) stay out of training and generation
    from eval.caption_metrics import CaptionScores

CIDER_NOTE = "CIDEr is pycocoevalcap's CIDEr-D (sigma 6, clipped, IDF over the scored images)"


def write_caption_report(
    scores: CaptionScores, out_dir: Path, *, decoding: Mapping[str, object] | None, sources: Mapping[str, str]
) -> dict[str, Path]:
    """Write caption_scores.json, caption_scores.md and caption_per_image.json into `out_dir`."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"caption_{name}" for name in ("scores.json", "scores.md", "per_image.json")}
    banner = subset_banner(scores.subset, scores.coverage, "images")
    atomic_write_json(paths["scores.json"], {
        "subset": scores.subset,
        "coverage": scores.coverage,
        "banner": banner,
        "metrics": scores.metrics,
        "scale": "fractions as returned by pycocoevalcap; papers report x100 (CIDEr 1.461 -> 146.1)",
        "cider": CIDER_NOTE,
        "n_images": scores.n_images,
        "n_reference_images": scores.n_reference_images,
        "decoding": dict(decoding) if decoding is not None else None,
        "java": scores.java,
        "sources": dict(sources),
        "per_image_file": paths["per_image.json"].name,
    })
    atomic_write_json(paths["per_image.json"], {
        "subset": scores.subset,
        "coverage": scores.coverage,
        "images": [{"image_id": i, "caption": scores.captions[i], **s} for i, s in scores.per_image.items()],
    })
    title = "Caption scores" + (f" (SUBSET {scores.coverage})" if scores.subset else "")
    rows = "\n".join(f"| {name} | {100 * value:.2f} |" for name, value in scores.metrics.items())
    atomic_write_text(paths["scores.md"], "\n".join([
        f"# {title}", "", f"**{banner}.**", "",
        "| metric | score (x100) |", "| --- | --- |", rows, "",
        f"{CIDER_NOTE}. Per-image scores: `{paths['per_image.json'].name}`.", "",
        *decoding_section(decoding), *sources_section(sources, scores.java),
    ]))
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser, score = score_parser("python -m eval.caption", __doc__, "score an official results file", "images")
    score.add_argument("--results", type=Path, required=True, help='[{"image_id": int, "caption": str}]')
    score.add_argument("--annotations", type=Path, required=True, help="COCO-format GT (images, annotations)")
    score.add_argument("--spice", action="store_true", help="also SPICE (needs its CoreNLP jars, Java 8)")
    score.add_argument("--decoding", type=Path, default=None,
                       help="generation metadata JSON (default: R.meta.json next to the results, if present)")
    score.add_argument("--workdir", type=Path, default=None, help="writable dir for temp files (default: $TMPDIR)")
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
