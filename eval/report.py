"""Score reports: a JSON for machines and a Markdown page for people, both carrying what makes a number comparable.

Every report states how many items were scored out of how many (a subset is marked SUBSET in the title, the JSON
and the per-item file) and the decoding settings the outputs were generated with (batch size included: greedy
output can depend on it through padding).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from eval.scienceqa_metrics import ScienceQAScores, format_percent, unparsed_note
from mm_excitor.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # scoring's imports (pycocoevalcap) stay out of training and generation
    from eval.caption_metrics import CaptionScores

CIDER_NOTE = "CIDEr is pycocoevalcap's CIDEr-D (sigma 6, clipped, IDF over the scored images)"


def subset_banner(subset: bool, coverage: str, unit: str) -> str:
    """The line that tells a reader whether a number is comparable with full-split results."""
    if subset:
        return (f"SUBSET: {coverage} {unit} scored; not comparable with numbers on the full split "
                "(for captions, CIDEr's IDF comes from the scored images)")
    return f"Full split: {coverage} {unit} scored"


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
        *_decoding_section(decoding), *_sources_section(sources, scores.java),
    ]))
    return paths


def write_scienceqa_report(
    scores: ScienceQAScores, out_dir: Path, *, decoding: Mapping[str, object] | None, sources: Mapping[str, str]
) -> dict[str, Path]:
    """Write scienceqa_scores.json and scienceqa_scores.md into `out_dir`."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"scienceqa_{name}" for name in ("scores.json", "scores.md")}
    banner = subset_banner(scores.subset, scores.coverage, "questions")
    note = unparsed_note(scores.unparsed_policy, scores.seed)
    atomic_write_json(paths["scores.json"], {
        "subset": scores.subset,
        "coverage": scores.coverage,
        "banner": banner,
        "split": scores.split,
        "accuracy": {k: a.percent for k, a in scores.categories.items()},
        "counts": {k: {"correct": a.correct, "n": a.n} for k, a in scores.categories.items()},
        "topics": {k: {"accuracy": a.percent, "correct": a.correct, "n": a.n} for k, a in scores.topics.items()},
        "n_unparsed": scores.n_unparsed,
        "unparsed": {"policy": scores.unparsed_policy, "seed": scores.seed, "n": scores.n_unparsed, "note": note},
        "split_size": {"n": scores.n_split, "from": scores.split_file or "problems.json split field (unchecked)"},
        "warnings": list(scores.warnings),
        "decoding": dict(decoding) if decoding is not None else None,
        "sources": dict(sources),
    })
    title = f"ScienceQA {scores.split} accuracy" + (f" (SUBSET {scores.coverage})" if scores.subset else "")
    atomic_write_text(paths["scores.md"], "\n".join([
        f"# {title}", "", f"**{banner}.**", "",
        *(f"**Warning: {w}.**\n" for w in scores.warnings),
        f"Unparsed answers: {scores.n_unparsed}. {note} TXT and IMG overlap: a question with both a hint and an "
        "image counts in each.", "",
        "| " + " | ".join(scores.categories) + " |",
        "|" + " --- |" * len(scores.categories),
        "| " + " | ".join(format_percent(a.percent) for a in scores.categories.values()) + " |",
        "| " + " | ".join(f"{a.correct}/{a.n}" for a in scores.categories.values()) + " |", "",
        "## Per topic", "", "| topic | accuracy | correct/n |", "| --- | --- | --- |",
        *(f"| {t} | {format_percent(a.percent)} | {a.correct}/{a.n} |" for t, a in scores.topics.items()), "",
        *_decoding_section(decoding), *_sources_section(sources, None),
    ]))
    return paths


def _decoding_section(decoding: Mapping[str, object] | None) -> list[str]:
    if decoding is None:
        return ["## Decoding settings", "",
                "Not recorded (no generation metadata was given): this number cannot be reproduced as reported.", ""]
    return ["## Decoding settings", "", "| setting | value |", "| --- | --- |",
            *(f"| {k} | {v} |" for k, v in decoding.items()), ""]


def _sources_section(sources: Mapping[str, str], java: str | None) -> list[str]:
    lines = ["## Sources", "", *(f"- {k}: `{v}`" for k, v in sources.items())]
    if java:
        lines.append(f"- java: {java}")
    return [*lines, ""]
