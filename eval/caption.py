"""COCO caption evaluation: `generate` writes the official results file, `score` reports pycocoevalcap metrics.

    python -m eval.caption generate --config runs/x --output R.json [--checkpoint DIR] [--split test] [--score]
    torchrun --nproc_per_node 8 -m eval.caption generate --config runs/x --output R.json
    python -m eval.caption score --results R.json --annotations GT.json [--allow-subset] [--spice] --out DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from eval.caption_files import write_results
from eval.caption_metrics import score_captions
from eval.generation import read_generation_meta
from eval.java import JavaNotFoundError
from eval.loading import add_generate_parser
from eval.report import write_caption_report
from eval.spice import SpiceUnavailableError

if TYPE_CHECKING:
    from eval.generation import EvalDataset, GenerativeModel
    from eval.loading import LoadedRun
# The model stack is imported on the generate path only, so that `score` starts fast. (Until eval.generation and
# eval.loading import torch lazily, the two imports above still bring it in.)


def generate_captions(
    model: GenerativeModel,
    dataset: EvalDataset,
    *,
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
    min_new_tokens: int,
    output: Path,
    resume: bool = True,
    rank: int = 0,
    world_size: int = 1,
    source: dict | None = None,
) -> Path | None:
    """Caption every item (`meta["image_id"]`) into the official results file `output`; see eval.generation.

    Returns `output` on the call that merged the shards, None on the others. Whitespace in a caption (newlines
    included, which would break PTB tokenisation) is collapsed to single spaces. `source` (e.g. the adapter's
    fingerprint) is recorded, and resuming parts made from another source is refused.
    """
    from eval.generation import Decoding, generate_outputs

    return generate_outputs(
        model, dataset, task="caption", id_key="image_id",
        decoding=Decoding(batch_size, num_beams, max_new_tokens, min_new_tokens),
        output=output, write_output=_write_captions, resume=resume, rank=rank, world_size=world_size, source=source,
    )


def _write_captions(records: list[dict], output: Path) -> None:
    write_results([{"image_id": r["id"], "caption": " ".join(r["text"].split())} for r in records], output)


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
    add_generate_parser(sub, "caption", help="caption a split with a trained checkpoint (official results file)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        from eval.loading import generate_command

        return generate_command(args, "caption", generate_captions, _score_generated)
    sources = {"results": str(args.results), "annotations": str(args.annotations)}
    return _score_and_report(args.results, args.annotations, args.out, sources, decoding_file=args.decoding,
                             allow_subset=args.allow_subset, spice=args.spice, workdir=args.workdir)


def _score_generated(run: LoadedRun, results: Path, out_dir: Path, options: dict) -> int:
    """`generate --score`: the references are the split's own (from the dataset the captions were made for)."""
    sources = {"results": str(results), "references": f"{run.split} split of the run config",
               "checkpoint": str(run.checkpoint)}
    return _score_and_report(results, run.data.references, out_dir, sources,
                             allow_subset=options["allow_subset"], workdir=out_dir)


def _score_and_report(results: Path, references: Path | dict, out_dir: Path, sources: dict[str, str], *,
                      decoding_file: Path | None = None, allow_subset: bool = False, spice: bool = False,
                      workdir: Path | None = None) -> int:
    try:
        decoding, meta = read_generation_meta(results, decoding_file)
        scores = score_captions(results, references, allow_subset=allow_subset, spice=spice, workdir=workdir)
    except (ValueError, JavaNotFoundError, SpiceUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if meta is not None:
        sources = {**sources, "decoding": str(meta)}
    paths = write_caption_report(scores, out_dir, decoding=decoding, sources=sources)
    print(paths["scores.md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0



def evaluate_captioner(model, dataset, references, decoding, out_dir: Path, *, rank: int = 0, world_size: int = 1,
                       allow_subset: bool = False) -> dict[str, dict] | None:
    """Caption `dataset` with the images and with the images removed (the image-blind control), score both.

    Returns {"image": metrics, "blind": metrics} on the merging rank, None on the others. Captions left in
    `out_dir` by an interrupted call are reused only if they came from the same adapter weights.
    """
    from data.datasets import ImageBlind
    from mm_excitor.checkpoint import adapter_fingerprint

    out_dir = Path(out_dir)
    table = {}
    for name, items in (("image", dataset), ("blind", ImageBlind(dataset))):
        results = out_dir / name / "captions.json"
        merged = generate_captions(
            model, items, batch_size=decoding.batch_size, num_beams=decoding.num_beams,
            max_new_tokens=decoding.max_new_tokens, min_new_tokens=decoding.min_new_tokens,
            output=results, rank=rank, world_size=world_size,
            source={"adapter": adapter_fingerprint(model), "images": name == "image"},
        )
        if merged is None:
            return None
        scores = score_captions(merged, references, allow_subset=allow_subset, workdir=out_dir / name)
        write_caption_report(scores, out_dir / name, decoding=vars(decoding) | {"images": name == "image"},
                             sources={"results": str(merged)})
        table[name] = scores.metrics
    return table


def format_comparison(table: dict[str, dict]) -> str:
    """Markdown table of the metrics with images and without (x100, as papers report them)."""
    names = list(next(iter(table.values())))
    lines = ["| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for run, metrics in table.items():
        lines.append(f"| {run} | " + " | ".join(f"{100 * metrics[n]:.1f}" for n in names) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
