"""How long the retention columns' capability probe takes to score, every option's full row against the options
scored after their question's shared prompt (eval.probe.option_log_likelihoods), side by side in one process on the
same questions, and that both give the same scores.

    OMP_NUM_THREADS=1 python bench/probe_scoring.py --per-category 10      # 40 questions, SmolLM2-135M-Instruct

Writes bench/results/probe_scoring.json: each way's wall and CPU seconds (`bench.timing.interleaved`, round-robin),
the speed-up, the largest difference between the two ways' option log-likelihoods and whether every prediction
is the same.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.delia import shown  # noqa: E402
from bench.retention import probe_questions  # noqa: E402
from bench.timing import interleaved, runtime_environment, setup_device, summary, write_results  # noqa: E402
from data.heldout import PROBE_FILE  # noqa: E402

WAYS = {"full rows": False, "shared prompt": True}
"""Each way's `share_prompt`."""


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from eval.probe import load_base, score_probe

    started = time.perf_counter()
    device = setup_device(args.threads, args.device)
    model, tokenizer = load_base(args.model, "float32", str(device))
    questions = probe_questions(args.probe, args.per_category)
    scored: dict[str, list[dict[str, Any]]] = {}

    def score(name: str):
        return lambda: scored.__setitem__(name, score_probe(model, tokenizer, questions, args.batch_size,
                                                            share_prompt=WAYS[name])["predictions"])

    wall, cpu = interleaved({name: score(name) for name in WAYS}, args.warmup, args.repeats, device)
    stats = {name: summary(wall[name], None if cpu is None else cpu[name]) for name in WAYS}
    full, shared = scored["full rows"], scored["shared prompt"]
    difference = max(abs(a - b) for f, s in zip(full, shared)
                     for a, b in zip(f["log_likelihoods"], s["log_likelihoods"]))
    same = all((f["choice"], f["choice_norm"]) == (s["choice"], s["choice_norm"]) for f, s in zip(full, shared))
    speedup = stats["full rows"]["median_s"] / stats["shared prompt"]["median_s"]
    table = "\n".join([
        f"probe scoring, {len(questions)} questions ({args.per_category} per category), {shown(args.model)}, "
        f"batch "
        f"{args.batch_size}, {args.threads} thread(s)", "",
        "| scoring | wall (s) | cpu (s) |", "|---|---|---|",
        *[f"| {name} | {stats[name]['median_s']:.1f} | {stats[name].get('cpu_median_s', float('nan')):.1f} |"
          for name in WAYS], "",
        f"speed-up {speedup:.2f}x; largest log-likelihood difference {difference:.2e}; same predictions: {same}"])
    return {"questions": len(questions), "per_category": args.per_category, "batch_size": args.batch_size,
            "model": shown(args.model), "timings": stats, "speedup": speedup,
            "max_log_likelihood_difference": difference, "same_predictions": same, "table": table,
            "environment": {**runtime_environment(device), "wall_s": time.perf_counter() - started}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / ".cache" / "smollm2-135m-instruct")
    parser.add_argument("--probe", type=Path, default=PROBE_FILE)
    parser.add_argument("--per-category", type=int, default=10, help="the first N questions of each category")
    parser.add_argument("--batch-size", type=int, default=32, help="option rows per forward pass (eval.probe's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "probe_scoring.json")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    results = measure(args)
    write_results(results, args.out, args.quiet)
    return results


if __name__ == "__main__":
    main()
