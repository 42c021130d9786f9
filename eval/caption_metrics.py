"""Caption scores exactly as pycocoevalcap computes them, minus its traps.

`COCOEvalCap.evaluate()` always runs SPICE (which downloads CoreNLP and fails on Java >= 9), writes temp files into
its install folder and, with `params['image_id']` narrowed, silently scores a subset. Here the same scorers run
individually on the same PTB tokens: BLEU-1..4, METEOR, ROUGE-L and CIDEr (pycocoevalcap's CIDEr is CIDEr-D),
SPICE only on request. A results file must cover every reference image unless `allow_subset` is given, because
CIDEr's IDF is computed over the scored images: a subset score is a different number, and is marked as one.

Order of work, so that scoring takes no longer than `COCOEvalCap` itself: METEOR, the critical path (seconds to load
its paraphrase table, then seconds to score), starts first in a helper process (eval/meteor.py) and loads while the
captions are tokenised, then scores them while BLEU, ROUGE-L and CIDEr run here. `COCOEvalCap` starts it after
tokenising and runs every scorer in turn.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from eval.caption_files import load_references, load_results
from mm_excitor.cli import format_ids
from eval.java import require_java
from eval.meteor import MeteorProcess
from eval.ptb_tokenizer import ptb_tokenize
from eval.spice import require_spice_jars, spice_score

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


class CaptionInputError(ValueError):
    """A results file (or references) that cannot be scored as given; the message names the offending ids."""


@dataclass(frozen=True)
class CaptionScores:
    """Corpus metrics as fractions like pycocoevalcap (CIDEr 1.461 is reported as 146.1) and per-image scores."""

    metrics: dict[str, float]
    per_image: dict[int, dict[str, float]]
    captions: dict[int, str]
    n_images: int
    n_reference_images: int
    subset: bool
    java: str

    @property
    def coverage(self) -> str:
        """`n/N` images scored: printed next to every number, because a subset CIDEr is not the split's CIDEr."""
        return f"{self.n_images}/{self.n_reference_images}"


def score_captions(
    results: list[dict] | Path,
    references: Mapping[int, Sequence[str]] | Path,
    *,
    allow_subset: bool = False,
    spice: bool = False,
    workdir: Path | None = None,
) -> CaptionScores:
    """Score an official results list (or file) against references (id -> captions, or a COCO-format GT file).

    Duplicated image ids are an error, not silently deduplicated: which of two captions to keep changes the score,
    and a duplicate usually means shards were concatenated twice. `workdir` (default: the system temp dir) holds
    the tokenizer's, METEOR's and SPICE's temporary files; a fresh subdirectory is used and removed.
    """
    java = require_java()
    if spice:
        require_spice_jars()
    refs = load_references(references) if isinstance(references, (str, Path)) else _check_references(references)
    preds = load_results(results) if isinstance(results, (str, Path)) else results
    captions = _validate_results(preds, refs, allow_subset=allow_subset)
    image_ids = [i for i in refs if i in captions]  # the GT order, which is pycocoevalcap's order
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="caption-eval-", dir=workdir) as tmp, MeteorProcess(Path(tmp)) as meteor:
        gts = ptb_tokenize({i: refs[i] for i in image_ids}, Path(tmp))
        res = ptb_tokenize({i: [captions[i]] for i in image_ids}, Path(tmp))
        meteor.submit(gts, res)
        metrics, per_image = _run_scorers(gts, res, meteor, spice=spice, workdir=Path(tmp))
    return CaptionScores(
        metrics=metrics,
        per_image=per_image,
        captions={i: captions[i] for i in image_ids},
        n_images=len(image_ids),
        n_reference_images=len(refs),
        subset=len(image_ids) < len(refs),
        java=java,
    )


def _run_scorers(
    gts: dict[int, list[str]], res: dict[int, list[str]], meteor: MeteorProcess, *, spice: bool, workdir: Path
) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """Run each pycocoevalcap scorer once on the tokenised captions, as COCOEvalCap.evaluate does, while `meteor`
    (already submitted) works in its own process; results are recorded in COCOEvalCap's metric order."""
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    scored = [(f"Bleu_{n + 1}", bleu[n], bleu_per_image[n]) for n in range(4)]
    rouge, cider = Rouge().compute_score(gts, res), Cider().compute_score(gts, res)
    scored += [("METEOR", *meteor.result()), ("ROUGE_L", *rouge), ("CIDEr", *cider)]
    if spice:
        scored.append(("SPICE", *spice_score(gts, res, workdir)))
    metrics = {name: float(score) for name, score, _ in scored}
    per_image = {image_id: {name: float(scores[k]) for name, _, scores in scored} for k, image_id in enumerate(gts)}
    return metrics, per_image


def _check_references(references: Mapping[int, Sequence[str]]) -> dict[int, list[str]]:
    bad = [k for k, v in references.items() if type(k) is not int or not v or not all(isinstance(c, str) for c in v)]
    if bad:
        raise CaptionInputError(
            f"references need int ids and at least one string caption each; bad ids: {format_ids(bad)}"
        )
    return {k: list(v) for k, v in references.items()}


def _validate_results(results: object, refs: Mapping[int, list[str]], *, allow_subset: bool) -> dict[int, str]:
    """Check the official results format against the references; return image id -> caption."""
    if not isinstance(results, list):
        raise CaptionInputError(f"results must be a list of {{'image_id', 'caption'}}, got {type(results).__name__}")
    if not results:
        raise CaptionInputError("the results are empty")
    captions: dict[int, str] = {}
    duplicates: list[int] = []
    for k, entry in enumerate(results):
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            raise CaptionInputError(f"results[{k}] is not an {{'image_id', 'caption'}} object: {entry!r:.200}")
        image_id, caption = entry["image_id"], entry["caption"]
        if type(image_id) is not int:
            raise CaptionInputError(f"results[{k}]: image_id {image_id!r} is a {type(image_id).__name__}, not an int")
        if not isinstance(caption, str):
            raise CaptionInputError(f"results[{k}] (image_id {image_id}): caption is not a string")
        if image_id in captions:
            duplicates.append(image_id)
        else:
            captions[image_id] = caption
    if duplicates:
        raise CaptionInputError(
            f"{len(duplicates)} duplicate image_id(s) in the results: {format_ids(duplicates)}. The official format "
            "has one caption per image; which caption to keep changes the score, so deduplicate upstream "
            "(the generator's merge does)."
        )
    unknown = [i for i in captions if i not in refs]
    if unknown:
        raise CaptionInputError(
            f"{len(unknown)} result image_id(s) are not in the references: {format_ids(unknown)} "
            "(wrong split or annotation file?)"
        )
    missing = [i for i in refs if i not in captions]
    if missing and not allow_subset:
        raise CaptionInputError(
            f"{len(missing)} of {len(refs)} reference images have no caption: {format_ids(missing)}. CIDEr's IDF is "
            "computed over the scored images, so a subset gives a different number: score the whole split, or allow "
            f"a subset (allow_subset=True / --allow-subset) to score {len(captions)}/{len(refs)} with every output "
            "marked SUBSET."
        )
    return captions
