"""ScienceQA's second protocol: multiple-choice likelihood, NOT the official letter protocol.

Each option is scored as the answer to the question: its text in the ``QCM-option`` format (the QCM prompt, then
`` {option}`` and EOS) gets the model's summed log-probability, and the best-scored option is the prediction (ties:
the first). This is the standard protocol for multiple-choice benchmarks with small LMs (lm-evaluation-harness's
`multiple_choice` tasks score options the same way): no text is generated and no letter is read, so it measures
whether the model knows the answer, not whether it can name the option's letter — which a 135M LM trained for
minutes does not learn (docs/results.md, "ScienceQA on the shapes set"). The breakdown is the official one
(eval.scienceqa_metrics); every report says which protocol made it, and its numbers are never to be put next to
letter-protocol numbers as if they were one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from data.collate import Collator
from data.prompts import scienceqa_example
from eval.generation import EvalDataset
from eval.scienceqa import write_scienceqa_report
from eval.scienceqa_metrics import (
    ScienceQAInputError, ScienceQAScores, format_official, score_scienceqa, write_official_results,
)
from mm_excitor.io import atomic_write_jsonl, read_json

PROTOCOL = "option likelihood (not the official letter protocol)"
LIKELIHOOD_FORMAT = "QCM-option"


def option_targets(problem: Mapping[str, Any]) -> list[str]:
    """The training target of each option of a problems.json record, as if it were the answer."""
    return [scienceqa_example(problem["question"], problem["hint"], problem["choices"], j, fmt=LIKELIHOOD_FORMAT)[1]
            for j in range(len(problem["choices"]))]


@torch.no_grad()
def option_log_likelihoods(model: Any, dataset: EvalDataset, collator: Collator, problems: Mapping[str, Mapping],
                           batch_size: int) -> dict[str, list[float]]:
    """pid -> log P(target_j + EOS | prompt, image) for every option j: one row per (item, option), collated as
    training rows (right-padded, labels on the target only), so each row's tokens are those it has alone."""
    rows: list[tuple[str, dict]] = []
    for index in range(len(dataset)):
        item = dataset[index]
        if item is None:  # an unreadable image the dataset was told to skip: scored as missing
            continue
        pid = str(item["meta"]["pid"])
        if pid not in problems:
            raise ScienceQAInputError(f"pid {pid} of the dataset is not in problems.json")
        rows += [(pid, {**item, "target": target}) for target in option_targets(problems[pid])]
    scores: dict[str, list[float]] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = collator([row for _, row in chunk]).to(model.device)
        for (pid, _), total in zip(chunk, model.label_log_likelihoods(**batch.inputs).tolist()):
            scores.setdefault(pid, []).append(total)
    return scores


def rank_options(scores: Mapping[str, list[float]]) -> dict[str, int]:
    """The best-scored option per pid (the first of equals)."""
    return {pid: max(range(len(s)), key=s.__getitem__) for pid, s in scores.items()}


def evaluate_likelihood(model: Any, dataset: EvalDataset, collator: Collator, problems_path: Path, out_dir: Path, *,
                        split: str, batch_size: int, allow_subset: bool = False,
                        source: Mapping[str, Any] | None = None) -> ScienceQAScores:
    """Score `dataset` by option likelihood; write the official results shape, every option's log-likelihood and
    a report that names the protocol into `out_dir`."""
    problems = read_json(problems_path)
    if not isinstance(problems, dict):
        raise ScienceQAInputError(f"{problems_path}: problems.json is a JSON object keyed by pid")
    scores = option_log_likelihoods(model, dataset, collator, problems, batch_size)
    predictions = rank_options(scores)
    result = score_scienceqa(predictions, problems, split=split, allow_subset=allow_subset)
    out_dir = Path(out_dir)
    write_official_results(predictions, out_dir / "scienceqa_results.json",
                           subset_note=f"SUBSET {result.coverage}" if result.subset else None)
    atomic_write_jsonl(out_dir / "option_log_likelihoods.jsonl",
                       ({"question_id": pid, "log_likelihoods": s, "choice": predictions[pid]} for pid, s in scores.items()))
    settings = {"protocol": PROTOCOL, "score": "sum of log P(' {option}' + EOS | QCM prompt)", "batch_size": batch_size}
    write_scienceqa_report(result, out_dir, decoding=settings,
                           sources={"problems": str(problems_path), **{k: str(v) for k, v in (source or {}).items()}})
    print(f"ScienceQA {split}, {PROTOCOL}:")
    print(format_official(result))
    return result
