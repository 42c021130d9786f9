"""DELIA's ablation: the shapes_json task tuned on a low-resource slice with R x |task| self-sampled general items,
for R in a list, scored under unseen instruction paraphrases and for retention of general ability.

    python -m bench.delia                                   # make delia; SmolLM2-135M, Excitor, R in 0,0.5,1,2
    python -m bench.delia --method lora --ratios 0,1 --epochs 4 --out runs/delia-lora

Stages, each cached and resumable:

1. a general pool: `--pool FILE` (any pool format), else a synthetic pool grown by the model from the shipped seed
   tasks (`python -m mm_excitor.delia pool`, in `<cache>/pool-<size>.jsonl`);
2. its last `--holdout` records are held out for retention; the model's own answers to the first
   round(max R x |task|) of the rest (`python -m mm_excitor.delia sample`, `[q, r, q]`, temperature 0.7, top-p 0.95);
3. one training run per R (`train_shapes_json.py` in its own process, `train.resume=latest`, in `<out>/R<r>`):
   the same `--task-items` training images, the same number of epochs over the mix (so every run sees each task
   item equally often and a run's steps grow with 1 + R), the instruction paraphrased per example; each run then
   evaluates the held-out test images under unseen paraphrases, with the images and blind (format validity and
   accuracy, eval/shapes_json.py);
4. retention: the mean NLL per answer token of the held-out records' reference answers (the same instruction
   template, text only) for every tuned model and for the model at initialisation, which for every method is the
   frozen base LM (Excitor gates and LoRA's B start at zero).

Writes `<out>/delia.json`, `<out>/delia.md` and `<out>/delia.png` (task metrics and retention against R).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.compare import TaskPreset, run_method, write_report  # noqa: E402
from mm_excitor.io import atomic_write_jsonl  # noqa: E402

RECIPE = "configs/shapes_json.yaml"
SEEDS = "data/delia/seed_tasks.jsonl"
COLUMNS = ("valid", "accuracy", "colour", "shape")


def parse_ratios(text: str) -> list[float]:
    ratios = sorted({float(value) for value in text.split(",") if value})
    if not ratios or ratios[0] < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative ratios, got {text!r}")
    return ratios


def delia_command(*args: str) -> None:
    """`python -m mm_excitor.delia ...` in its own process (it resumes from its journal when rerun)."""
    print("+ python -m mm_excitor.delia " + " ".join(args), flush=True)
    result = subprocess.run([sys.executable, "-m", "mm_excitor.delia", *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        raise SystemExit(f"error: `python -m mm_excitor.delia {args[0]}` failed (exit {result.returncode}); rerun "
                         "to continue from its journal")


def prepare_pool(args: argparse.Namespace) -> Path:
    if args.pool is not None:
        return args.pool
    out = args.cache / f"pool-{args.pool_size}.jsonl"
    if not out.is_file():
        delia_command("pool", "--model", str(args.model), "--seeds", SEEDS, "--out", str(out),
                      "--size", str(args.pool_size), "--device", args.device, "--no-progress")
    return out


def split_pool(pool_path: Path, holdout: int, needed: int) -> tuple[list, list]:
    """(records to self-sample, held-out records): the last `holdout` records are held out."""
    from mm_excitor.delia import load_pool

    records = load_pool(pool_path).records
    if holdout < 1 or len(records) < holdout + needed:
        raise SystemExit(f"error: {pool_path} has {len(records)} records; the ablation needs {needed} to sample "
                         f"(max R x |task|) plus {holdout} held out (> 0) for retention")
    return records[:needed], records[len(records) - holdout:]


def prepare_samples(args: argparse.Namespace, records: list, pool_path: Path) -> Path:
    """The model's own answers to `records` (cached by pool, count and settings)."""
    tag = f"{pool_path.stem}-n{len(records)}-t{args.max_new_tokens}"
    out = args.cache / f"samples-{tag}.jsonl"
    if len(records) and not out.is_file():
        pool = args.cache / f"to-sample-{tag}.jsonl"
        atomic_write_jsonl(pool, ({"id": r.id, "query": r.query, "answer": r.answer} for r in records))
        delia_command("sample", "--model", str(args.model), "--pool", str(pool), "--out", str(out),
                      "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.sample_batch_size),
                      "--device", args.device, "--no-progress")
    return out


def steps_for(ratio: float, args: argparse.Namespace) -> int:
    """`--epochs` over the mix of |task| + round(R x |task|) items."""
    items = args.task_items + round(ratio * args.task_items)
    return max(1, math.ceil(args.epochs * items / args.batch_size))


def train_ratio(args: argparse.Namespace, ratio: float, samples: Path) -> dict[str, Any]:
    preset = TaskPreset("shapes_json", args.recipe, steps_for(ratio, args), "accuracy", COLUMNS)
    overrides = [f"model.language_model={args.model}", f"data.train_limit={args.task_items}",
                 f"data.eval_limit={args.eval_items}", f"data.delia.samples={samples}", f"data.delia.ratio={ratio}",
                 f"train.batch_size={args.batch_size}", f"train.device={args.device}",
                 f"train.save_every_steps={args.save_every}", "train.eval_every_steps=100000",
                 "train.tensorboard=false", *args.override]
    start = time.perf_counter()
    summary = run_method(preset, args.method, args.lr, preset.steps, run_dir(args, ratio), overrides,
                         label=f"R={ratio:g}")
    return {**summary, "bench_wall_s": time.perf_counter() - start}


def shown(path: Path) -> str:
    """A path as recorded in the results: relative to the repository when inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run_dir(args: argparse.Namespace, ratio: float) -> Path:
    return args.out / f"R{ratio:g}"


def answer_nll(model: Any, collator: Any, items: list[dict], batch_size: int = 8) -> float:
    """Mean negative log-likelihood per answer token (nats) of `items`' targets given their prompts."""
    import torch

    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = collator(items[start:start + batch_size]).to(model.device)
            n = batch.num_label_tokens
            total += float(model(**batch.inputs, num_items_in_batch=n).loss) * n
            tokens += n
    return total / tokens


def retention(args: argparse.Namespace, held_out: list) -> dict[str, Any]:
    """Answer-token NLL of the held-out references for each tuned model and for the model at initialisation."""
    from data.collate import Collator
    from data.mix import instruction_item
    from mm_excitor.train import init_distributed, seed_everything
    from tasks import get_task
    from tasks.run import build, load_run, read_run_config

    items = [instruction_item(r.query, r.answer, {"pool_id": r.id}) for r in held_out]
    task = get_task("shapes_json")
    tuned = {}
    for ratio in args.ratios:
        run = load_run(task, run_dir(args, ratio), device=args.device)
        tuned[f"{ratio:g}"] = answer_nll(run.model, Collator(run.model.tokenizer, args.retention_max_length,
                                                             blank=run.data.blank), items)
        del run
    config = read_run_config(task, run_dir(args, args.ratios[0]))
    seed_everything(config.train.seed)
    model, data = build(task, config, init_distributed(args.device).device, ("eval",))
    base = answer_nll(model.eval(), Collator(model.tokenizer, args.retention_max_length, blank=data.blank), items)
    return {"items": len(items), "base": base, "tuned": tuned, "max_length": args.retention_max_length}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    needed = round(max(args.ratios) * args.task_items)
    pool_path = prepare_pool(args)
    to_sample, held_out = split_pool(pool_path, args.holdout, needed)
    samples = prepare_samples(args, to_sample, pool_path)
    stages = {"data_s": time.perf_counter() - started}
    rows = []
    for ratio in args.ratios:
        summary = train_ratio(args, ratio, samples)
        rows.append({"ratio": ratio, "steps": summary["steps"], "delia_items": round(ratio * args.task_items),
                     "train_time_s": summary["train_time_s_total"], "image": summary["eval"]["image"],
                     "blind": summary["eval"]["blind"]})
    stages["runs_s"] = time.perf_counter() - started - stages["data_s"]
    kept = retention(args, held_out)
    for row in rows:
        row["retention_nll"] = kept["tuned"][f"{row['ratio']:g}"]
    stages["retention_s"] = time.perf_counter() - started - stages["data_s"] - stages["runs_s"]
    results = {
        "method": args.method, "recipe": args.recipe, "model": shown(args.model), "task_items": args.task_items,
        "eval_items": args.eval_items, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "pool": shown(pool_path), "samples": shown(samples), "sampled": needed, "max_new_tokens": args.max_new_tokens,
        "retention_items": kept["items"], "base_nll": kept["base"], "rows": rows, "overrides": args.override,
        "wall_s": stages,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out / "delia", results, markdown, plot)
    return results


def markdown(results: dict[str, Any]) -> str:
    header = ["R", "DELIA items", "steps", "valid % (image)", "accuracy % (image)", "colour %", "shape %",
              "valid % (blind)", "accuracy % (blind)", "answer NLL", "vs base", "vs R=0"]
    r0 = next((row["retention_nll"] for row in results["rows"] if row["ratio"] == 0), None)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        image, blind, nll = row["image"], row["blind"], row["retention_nll"]
        cells = [f"{row['ratio']:g}", str(row["delia_items"]), str(row["steps"]),
                 *(f"{image[c]:.1f}" for c in COLUMNS), f"{blind['valid']:.1f}", f"{blind['accuracy']:.1f}",
                 f"{nll:.3f}", f"{nll - results['base_nll']:+.3f}", "-" if r0 is None else f"{nll - r0:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nFrozen base model: answer NLL {results['base_nll']:.3f} nats/token on "
                 f"{results['retention_items']} held-out general instructions; {results['task_items']} task images, "
                 f"{results['eval_items']} test images under unseen paraphrases, {results['epochs']} epochs over "
                 f"each mix, method {results['method']}.")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [row["ratio"] for row in results["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for run, style in (("image", "-o"), ("blind", ":x")):
        for metric in ("valid", "accuracy"):
            axes[0].plot(ratios, [row[run][metric] for row in results["rows"]], style, label=f"{metric} ({run})")
    axes[0].set_ylabel("% of held-out test images (unseen paraphrases)")
    axes[0].set_ylim(-2, 102)
    axes[0].legend(fontsize=8)
    axes[1].plot(ratios, [row["retention_nll"] for row in results["rows"]], "-o", label="tuned")
    axes[1].axhline(results["base_nll"], color="grey", linestyle="--", label="frozen base")
    axes[1].set_ylabel("held-out general answers: NLL per token")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("R (DELIA items per task item)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"DELIA ablation: shapes_json, {results['task_items']} task images, {results['method']}, "
                 "random-init CLIP", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.delia", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(".cache/smollm2-135m-instruct"),
                        help="the LM to tune and to self-sample (a local Hugging Face directory)")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--method", default="excitor")
    parser.add_argument("--ratios", type=parse_ratios, default=parse_ratios("0,0.5,1,2"), help="R values")
    parser.add_argument("--task-items", type=int, default=64, help="training images of the low-resource slice")
    parser.add_argument("--eval-items", type=int, default=64, help="test images scored per run")
    parser.add_argument("--epochs", type=float, default=4.0, help="epochs over each run's mix")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--pool", type=Path, default=None, help="a general pool (default: grow a synthetic one)")
    parser.add_argument("--pool-size", type=int, default=160, help="size of the synthetic pool")
    parser.add_argument("--holdout", type=int, default=32, help="pool records held out for retention")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="of each self-sampled answer")
    parser.add_argument("--sample-batch-size", type=int, default=8)
    parser.add_argument("--retention-max-length", type=int, default=512,
                        help="tokens of prompt + reference scored for retention (longer ones are cut)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--save-every", type=int, default=50, help="checkpoint interval of each run (steps)")
    parser.add_argument("--cache", type=Path, default=Path(".cache/delia"), help="pool and samples")
    parser.add_argument("--out", type=Path, default=Path("runs/delia"))
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config override applied to every run (repeatable)")
    args = parser.parse_args(argv)
    for name in ("model", "cache", "out", "pool"):  # the subprocesses run in the repository root
        value = getattr(args, name)
        if value is not None and not value.is_absolute():
            setattr(args, name, Path.cwd() / value)
    args.cache.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from mm_excitor.methods import METHODS

    if args.method not in METHODS:
        raise SystemExit(f"error: unknown method {args.method}; one of {', '.join(sorted(METHODS))}")
    return run(args)


if __name__ == "__main__":
    main()
