"""The method comparison: the Excitor against LoRA (+ LLaVA-style prefix), LLaMA-Adapter and a prefix baseline on
the same data, prompts, budget and scorer, each next to its image-blind control.

    python -m bench.compare --task shapes-caption --methods excitor,lora,llama_adapter,prefix
    python -m bench.compare --task shapes-sqa --steps 600
    python -m bench.compare --task shapes-caption --sweep 2e-3,5e-3,1e-2    # each method's learning rate, swept
    python -m bench.compare --task shapes-caption --seeds 0,1,2             # every row a mean over three seeds

Every method trains with the same recipe (configs/demo.yaml or configs/shapes_scienceqa.yaml): the same steps,
batch, data order and seed, and its own learning rate (LEARNING_RATES, or with `--sweep` the grid's rate with the
lowest validation loss after the last step; the held-out score never chooses). Each run is `train_<task>.py` in
its own process (its peak memory is its own) with `train.resume=latest` in `<out>/<method>/lr<lr>` (with `--seeds`:
`<out>/<method>/lr<lr>/seed<seed>`, the sweep at the first seed, then every seed at the rate it chose), so an
interrupted comparison continues where it stopped, a finished run is not trained again, and a sweep's runs are the
comparison's runs. With several seeds a row's numbers are their mean, with the sample standard deviation (`spread`)
and each seed's values (`per_seed`) in compare.json, mean ± spread in compare.md, and the means in compare.png. After training, the run's own evaluation scores the held-out test split with the images and
without them. Then generation speed is measured on the same prompts for every method, and every method's training
step is timed again on one fixed batch, all methods interleaved in one process: the runs' own step times depend on
what else the machine did while each ran, the side-by-side ratios do not. Writes `<out>/compare.json`,
`<out>/compare.md` (with every learning rate tried) and `<out>/compare.png` (held-out metric against training
wall-clock time and against trainable parameters). Every row also says what tuning did to the LM's text-only
abilities (bench/retention.py): capability-probe accuracy and held-out instruction NLL against the frozen base.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import retention  # noqa: E402
from data.heldout import PROBE_FILE  # noqa: E402
from mm_excitor.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402


@dataclass(frozen=True)
class TaskPreset:
    task: str
    """The tasks.TASKS name (its train_<task>.py trains)."""
    recipe: str
    steps: int
    metric: str
    """The headline held-out metric (as the task reports it)."""
    columns: tuple[str, ...]
    """Metrics shown with images and without them."""
    overrides: tuple[str, ...] = ()
    """Run-config overrides that make the preset (e.g. the likelihood protocol's answer format)."""


SCIENCEQA_COLUMNS = ("Avg", "NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
PRESETS = {
    "shapes-caption": TaskPreset("caption", "configs/demo.yaml", 100, "CIDEr",
                                 ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr")),
    "shapes-sqa": TaskPreset("scienceqa", "configs/shapes_scienceqa.yaml", 300, "Avg", SCIENCEQA_COLUMNS),
    # the second, clearly separate protocol: answers are option texts, options ranked by likelihood
    "shapes-sqa-likelihood": TaskPreset("scienceqa", "configs/shapes_scienceqa.yaml", 500, "Avg", SCIENCEQA_COLUMNS,
                                        ("data.prompt_format=QCM-option",)),
    # the language-only experiment (bench/instruct_compare.py): no images, the capability probe against the base
    "instruct": TaskPreset("instruct", "configs/compare_instruct.yaml", 200, "answer_nll", ()),
}
LEARNING_RATES = {
    "shapes-caption": {"excitor": 2e-2, "lora": 1.25e-3, "llama_adapter": 2e-2, "prefix": 1e-2},
    "shapes-sqa": {"excitor": 5e-3, "lora": 5e-3, "llama_adapter": 5e-3, "prefix": 5e-3},
    "shapes-sqa-likelihood": {"excitor": 5e-3, "lora": 5e-3, "llama_adapter": 1e-2, "prefix": 1e-2},
}
"""Each method's learning rate per task: shapes-caption, the winners of `--sweep 5e-3,1e-2` at 100 steps;
shapes-sqa-likelihood, the winners of two rates per method at 500 steps (5e-3 and the side the caption sweep
favoured); shapes-sqa (the letter protocol), the demo's 5e-3, not swept. The sweeps' numbers are in
docs/results.md. Replace a value only with a sweep's winner."""


def run_method(preset: TaskPreset, method: str, lr: float, steps: int, out: Path, overrides: list[str],
               label: str | None = None, evaluate: bool = True) -> dict[str, Any]:
    """Train (or finish training) and, with `evaluate`, evaluate one method in its own process; its summary.json.
    `label` names the run in the progress lines (default: the method)."""
    label = label or method
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = read_json(summary_path)
        if summary.get("steps") == steps and not summary.get("interrupted") and ("eval" in summary or not evaluate):
            print(f"{label}: done before ({summary_path})", flush=True)
            return summary
    args = [sys.executable, f"train_{preset.task}.py", "--config", preset.recipe, f"model.method={method}",
            f"train.lr={lr}", f"train.max_steps={steps}", f"train.output_dir={out}", "train.resume=latest",
            "train.progress_bar=false", f"evaluate={str(evaluate).lower()}", *preset.overrides, *overrides]
    print(f"{label}: training {steps} steps at lr {lr:g} -> {out}", flush=True)
    result = subprocess.run(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        raise SystemExit(f"error: {label} failed (exit {result.returncode}); rerun to continue from its checkpoint")
    return read_json(summary_path)


def step_time(output_dir: Path) -> float:
    """Median seconds per optimiser step over the logged intervals (validation falls in one interval only)."""
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    batch = read_json(output_dir / "train_config.json")["effective_batch"]
    return statistics.median(batch / r["samples_per_s"] for r in train if r.get("samples_per_s"))


def generation_speed(preset: TaskPreset, output_dir: Path, prompts: int, new_tokens: int) -> float:
    """Tokens per second of greedy generation with images, `new_tokens` forced for every prompt."""
    import torch

    from mm_excitor.decoding import Decoding
    from tasks.run import load_run

    run = load_run(preset.task, output_dir)
    items = [item for item in (run.dataset[i] for i in range(min(prompts, len(run.dataset)))) if item is not None]
    batch = run.collator.prompts(items).to(run.model.device)
    decoding = Decoding(batch_size=len(items), max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    with torch.no_grad():
        run.model.generate(**batch.inputs, decoding=Decoding(batch_size=len(items), max_new_tokens=2))  # warm-up
        start = time.perf_counter()
        run.model.generate(**batch.inputs, decoding=decoding)
        elapsed = time.perf_counter() - start
    return len(items) * new_tokens / elapsed


def side_by_side_step_times(preset: TaskPreset, runs: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Median seconds per training step (forward, backward, AdamW) of each run (a label and its run-config
    overrides, `model.method` among them) on one fixed training batch of the recipe, timed interleaved in this one
    process after a warm-up round: every method sees the same machine load, so the ratios between them hold even
    where the separate runs' step times were measured under other loads."""
    import torch

    from mm_excitor.recipe import load_config
    from tasks import get_task
    from tasks.run import build

    task = get_task(preset.task)
    steps = {}
    for label, overrides in runs.items():
        config = load_config(task.config_class, REPO / preset.recipe,
                             [*preset.overrides, *overrides, "train.device=cpu"])
        torch.manual_seed(config.train.seed)
        model, data = build(task, config, torch.device("cpu"), ("train",))
        batch = task.collator(model.tokenizer, config, data)(
            [data.train[i] for i in range(min(config.train.batch_size, len(data.train)))])
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
        steps[label] = (model.train(), batch, optimizer)
    times: dict[str, list[float]] = {label: [] for label in runs}
    for round_ in range(repeats + 1):
        for label, (model, batch, optimizer) in steps.items():
            start = time.perf_counter()
            model(**batch.inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if round_:  # round 0 warms up
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def trainable_parameters(output_dir: Path, steps: int) -> int:
    return int(read_json(output_dir / "checkpoints" / f"step-{steps}" / "adapter_config.json")["num_parameters"])


def final_validation_loss(output_dir: Path, steps: int) -> float:
    """The validation loss after the last step (every comparison run validates exactly then)."""
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [r for r in records if r.get("kind") == "val"]
    if not val or val[-1]["step"] != steps:
        raise SystemExit(f"error: {output_dir / 'metrics.jsonl'} has no validation loss at step {steps}")
    return float(val[-1]["loss"])


ALL_METHODS = "*"
"""The `--sweep` key of a grid given without a method name: every method's grid."""


def candidate_rates(args: argparse.Namespace, method: str, default: list[float] | None = None) -> list[float]:
    """`--sweep`'s grid for this method, else its grid for every method, else `--lr`'s value, else `default`
    (LEARNING_RATES' rate when not given)."""
    grid = args.sweep.get(method, args.sweep.get(ALL_METHODS))
    if grid:
        return list(grid)
    if method in (args.lr or {}):
        return [args.lr[method]]
    return list(default) if default is not None else [LEARNING_RATES[args.task][method]]


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """`LR,LR,...` (every method) or `METHOD=LR,LR,...` (that method) -> (method or ALL_METHODS, rates)."""
    method, _, rates = text.rpartition("=")
    try:
        grid = [float(value) for value in rates.split(",") if value]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LR,LR,... or METHOD=LR,LR,...") from None
    return method or ALL_METHODS, grid


def swept_rates(grid: list[float], extend: int, loss: Callable[[float], float]) -> Iterator[float]:
    """The grid's rates, then, while the lowest loss sits at an edge of what was tried, one more rate beyond that
    edge at the grid's outer ratio (at most `extend` more): a sweep whose winner is its largest rate has not found
    the method's rate. `loss` reads a yielded rate's result once the caller has trained it."""
    tried = sorted(grid)
    yield from tried
    for _ in range(extend if len(tried) > 1 else 0):
        best = min(tried, key=loss)
        if best == tried[-1]:
            beyond = best * tried[-1] / tried[-2]
        elif best == tried[0]:
            beyond = best * tried[0] / tried[1]
        else:
            return
        beyond = float(f"{beyond:.3g}")
        yield beyond
        tried = sorted([*tried, beyond])


@dataclass(frozen=True)
class SeededRuns:
    """A method's (or row's) runs: the sweep at the first seed, then every seed at the rate it chose."""

    lr: float
    """The swept rate with the lowest final validation loss at the first seed."""
    sweep: dict[float, tuple[Path, dict[str, Any], float]]
    """Every rate tried at the first seed: its run directory, summary.json and final validation loss."""
    runs: dict[int | None, tuple[Path, dict[str, Any]]]
    """Every seed's run at `lr` (its directory and summary.json); the key None: the recipe's own seed."""


def seed_run_directory(out: Path, lr: float, seed: int | None) -> Path:
    """`<out>/lr<lr>/seed<seed>`, or `<out>/lr<lr>` for one run at the recipe's seed: one run per learning rate and
    seed, so a sweep's runs are the comparison's runs."""
    run_dir = out / f"lr{lr:g}"
    return run_dir if seed is None else run_dir / f"seed{seed}"


def train_seeds(preset: TaskPreset, method: str, name: str, grid: list[float], extend: int,
                seeds: list[int] | None, steps: int, out: Path, overrides: list[str],
                evaluate: bool = True) -> SeededRuns:
    """Sweep `grid` (extended past a winning edge, `swept_rates`) at the first of `seeds`, then train every seed at
    the rate with the lowest final validation loss (never the held-out score). Each run is `run_method`'s resumable
    run in `seed_run_directory(out, lr, seed)` with `train.seed=<seed>` (`seeds` None: one seed, the recipe's);
    `name` labels the progress lines."""
    seeds = [None] if seeds is None else seeds

    def run(lr: float, seed: int | None) -> tuple[Path, dict[str, Any]]:
        run_dir = seed_run_directory(out, lr, seed)
        seeded = overrides if seed is None else [*overrides, f"train.seed={seed}"]
        label = f"{name} (lr {lr:g})" if seed is None else f"{name} (lr {lr:g}, seed {seed})"
        return run_dir, run_method(preset, method, lr, steps, run_dir, seeded, label=label, evaluate=evaluate)

    sweep: dict[float, tuple[Path, dict[str, Any], float]] = {}
    for lr in swept_rates(grid, extend, lambda rate: sweep[rate][2]):
        run_dir, summary = run(lr, seeds[0])
        sweep[lr] = (run_dir, summary, final_validation_loss(run_dir, steps))
    lr = min(sweep, key=lambda rate: sweep[rate][2])
    runs = {seeds[0]: sweep[lr][:2], **{seed: run(lr, seed) for seed in seeds[1:]}}
    return SeededRuns(lr, sweep, runs)


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """The mean over seeds and the sample standard deviation (0 for one seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def over_seeds(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(means, spreads) of the seeds' records, key by key and into nested dicts: the mean and sample standard
    deviation of every number; any other value is the first seed's (and has no spread)."""
    means: dict[str, Any] = {}
    spreads: dict[str, Any] = {}
    for key, first in records[0].items():
        values = [record[key] for record in records]
        if isinstance(first, dict):
            means[key], spreads[key] = over_seeds(values)
        elif isinstance(first, (int, float)) and not isinstance(first, bool) and None not in values:
            means[key], spreads[key] = mean_and_spread(values)
        else:
            means[key] = first
    return means, spreads


def seed_scores(preset: TaskPreset, run_dir: Path, summary: dict[str, Any], steps: int, probe: Path,
                probe_per_category: int | None) -> dict[str, Any]:
    """One seed's run as a row reports it: its training, its held-out scores and its retention."""
    return {
        "val_loss": final_validation_loss(run_dir, steps), "step_s": step_time(run_dir),
        "train_time_s": summary["train_time_s_total"], "peak_memory_bytes": summary["peak_memory_bytes"],
        "tokens_per_s": summary["tokens_per_s"],
        "image": summary["eval"]["image"], "blind": summary["eval"]["blind"],
        **retention.run_scores(preset.task, run_dir, probe, probe_per_category),
    }


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Train every method at each candidate learning rate at the first seed, then every seed at the rate with the
    lowest final validation loss (resumable runs, each scored on the held-out split with and without images; the
    held-out score never chooses). A method's row holds the mean over seeds of every number, its sample standard
    deviation (`spread`) and each seed's own values (`per_seed`)."""
    preset = PRESETS[args.task]
    steps = args.steps or preset.steps
    out = args.out or REPO / "runs" / "compare" / args.task
    overrides = [*args.override, f"train.eval_every_steps={steps}"]
    rows, sweep = [], {}
    for method in args.methods:
        trained = train_seeds(preset, method, method, candidate_rates(args, method), args.sweep_extend, args.seeds,
                              steps, out / method, overrides)
        sweep[method] = {f"{lr:g}": {"val_loss": loss, "image": summary["eval"]["image"][preset.metric],
                                     "blind": summary["eval"]["blind"][preset.metric]}
                         for lr, (_, summary, loss) in trained.sweep.items()}
        per_seed = [{"seed": seed, "run": str(run_dir),
                     **seed_scores(preset, run_dir, summary, steps, args.probe, args.probe_per_category)}
                    for seed, (run_dir, summary) in trained.runs.items()]
        means, spreads = over_seeds([{k: v for k, v in record.items() if k not in ("seed", "run")}
                                     for record in per_seed])
        run_dir, summary = next(iter(trained.runs.values()))
        rows.append({
            "method": method, "lr": trained.lr, "steps": steps, "seeds": [record["seed"] for record in per_seed],
            "trainable_parameters": trainable_parameters(run_dir, steps),
            **means, "peak_memory_kind": summary["peak_memory_kind"], "protocol": summary.get("eval_protocol"),
            "generation_tokens_per_s": generation_speed(preset, run_dir, args.gen_prompts, args.gen_tokens),
            "spread": spreads, "per_seed": per_seed,
        })
    base = retention.base_scores(preset.task, run_dir, out, args.probe, args.probe_per_category)
    retention.add_changes(rows, base)
    if args.side_by_side_repeats:
        side_by_side = side_by_side_step_times(
            preset, {method: [*args.override, f"model.method={method}"] for method in args.methods},
            args.side_by_side_repeats)
        for row in rows:
            row["step_s_side_by_side"] = side_by_side[row["method"]]
    results = {"task": args.task, "recipe": preset.recipe, "steps": steps, "seeds": args.seeds,
               "metric": preset.metric, "columns": list(preset.columns),
               "overrides": [*preset.overrides, *args.override], "probe_per_category": args.probe_per_category,
               "rows": rows, "learning_rates": sweep, "retention_base": base}
    write_report(out / "compare", results, markdown, plot)
    return results


def write_report(stem: Path, results: dict[str, Any], markdown: Callable[[dict[str, Any]], str],
                 plot: Callable[[dict[str, Any], Path], None]) -> None:
    """`<stem>.json` (the results), `<stem>.md` (their table, also printed) and `<stem>.png` (their plot)."""
    paths = [stem.with_suffix(suffix) for suffix in (".json", ".md", ".png")]
    table = markdown(results)
    atomic_write_json(paths[0], results)
    atomic_write_text(paths[1], table)
    plot(results, paths[2])
    print(table)
    print(f"wrote {', '.join(map(str, paths))}")


def markdown(results: dict[str, Any]) -> str:
    columns = results["columns"]
    side_by_side = all("step_s_side_by_side" in row for row in results["rows"])
    reference = next((row for row in results["rows"] if row["method"] == "excitor"), results["rows"][0])
    header = ["method", "lr", "trainable params", "step (s)",
              *([f"step / {reference['method']}'s, side by side"] if side_by_side else []), "peak memory", "tokens/s",
              *[f"{c} image" for c in columns], f"{results['metric']} blind", "gen tokens/s", *retention.header()]
    protocols = sorted({str(row.get("protocol")) for row in results["rows"]})
    seeds = results.get("seeds")
    over = (f"; mean ± sample standard deviation over seeds {', '.join(map(str, seeds))}" if seeds and len(seeds) > 1
            else "")
    lines = [f"{results['task']}, {results['steps']} steps per method; scored by: {'; '.join(protocols)}{over}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        spread = row.get("spread", {})
        cells = [row["method"], f"{row['lr']:g}", f"{row['trainable_parameters']:,}", f"{row['step_s']:.2f}",
                 *([f"{row['step_s_side_by_side'] / reference['step_s_side_by_side']:.2f}"] if side_by_side else []),
                 f"{row['peak_memory_bytes'] / 2**30:.2f} GiB", f"{row['tokens_per_s']:.0f}",
                 *[_number(row["image"].get(c), spread.get("image", {}).get(c)) for c in columns],
                 _number(row["blind"].get(results["metric"]), spread.get("blind", {}).get(results["metric"])),
                 f"{row['generation_tokens_per_s']:.1f}", *retention.cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += retention.markdown_lines(results)
    rates = results.get("learning_rates", {})
    if any(len(runs) > 1 for runs in rates.values()):
        metric = results["metric"]
        lines += ["", "Learning rates tried (the lowest final validation loss picks the row above):", "",
                  f"| method | lr | val loss | {metric} image | {metric} blind |", "|---|---|---|---|---|"]
        chosen = {row["method"]: f"{row['lr']:g}" for row in results["rows"]}
        for method, runs in rates.items():
            for lr, run in sorted(runs.items(), key=lambda item: float(item[0])):
                mark = " (chosen)" if chosen.get(method) == lr else ""
                lines.append(f"| {method} | {lr}{mark} | {run['val_loss']:.4f} | {_number(run['image'])} | "
                             f"{_number(run['blind'])} |")
    return "\n".join(lines) + "\n"


def _number(value: float | None, spread: float | None = None) -> str:
    """`value`, with ` ± spread` when seeds differ."""
    return "-" if value is None else f"{value:.1f}" + (f" ± {spread:.1f}" if spread else "")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for row in results["rows"]:
        value = row["image"][metric]
        spread = row.get("spread", {}).get("image", {}).get(metric, 0.0)  # over seeds; 0 for one seed
        for ax, x in ((axes[0], row["train_time_s"] / 60), (axes[1], row["trainable_parameters"])):
            ax.errorbar(x, value, yerr=spread, fmt="o", capsize=3, label=row["method"])
            ax.annotate(f"blind {row['blind'][metric]:.1f}", (x, value), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
    axes[0].set_xlabel("training wall-clock (min)")
    axes[1].set_xlabel("trainable parameters")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel(f"held-out {metric} (with images)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = results.get("seeds") or []
    over = f", mean ± sd over {len(seeds)} seeds" if len(seeds) > 1 else ""
    fig.suptitle(f"{results['task']}: {results['steps']} steps each{over}, random-init CLIP", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_grids(pairs: list[tuple[str, list[float]]], known: list[str]) -> dict[str, list[float]]:
    """`--sweep`'s (method, grid) pairs as {method or ALL_METHODS: grid}, checked: `known` methods (or rows), one
    grid each, distinct positive rates."""
    grids: dict[str, list[float]] = {}
    for method, grid in pairs:
        if method != ALL_METHODS and method not in known:
            raise SystemExit(f"error: --sweep names unknown method {method!r}; one of {', '.join(sorted(known))}")
        if not grid or min(grid) <= 0 or len(set(grid)) != len(grid):
            raise SystemExit(f"error: --sweep needs distinct positive learning rates, got {grid}")
        if method in grids:
            raise SystemExit(f"error: --sweep gives {'every method' if method == ALL_METHODS else method} two grids")
        grids[method] = grid
    return grids


def check_seeds(seeds: list[int] | None) -> None:
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise SystemExit(f"error: --seeds needs distinct seeds, got {seeds}")


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",") if seed]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SEED,SEED,...") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(PRESETS), required=True)
    parser.add_argument("--methods", default=None, type=lambda text: [m for m in text.split(",") if m],
                        help="default: excitor,lora,llama_adapter,prefix; for --task instruct its rows "
                             "(bench/instruct_compare.py ROWS)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per method (default: the preset's)")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/compare/<task>")
    parser.add_argument("--lr", default=None, help="method=lr,... overriding LEARNING_RATES",
                        type=lambda text: {k: float(v) for k, v in (p.split("=") for p in text.split(",") if p)})
    parser.add_argument("--sweep", action="append", default=[], type=parse_sweep, metavar="[METHOD=]LR,LR,...",
                        help="learning rates to try: one full run each; the lowest final validation loss picks the "
                             "method's row. Without METHOD= the grid is every method's; repeat with METHOD= for a "
                             "method's own grid")
    parser.add_argument("--sweep-extend", type=int, default=2,
                        help="with --sweep: at most this many rates tried beyond the grid's edge while a method's "
                             "best rate is the largest or smallest tried")
    parser.add_argument("--seeds", default=None, type=parse_seeds, metavar="SEED,SEED,...",
                        help="training seeds of every method (runs <out>/<method>/lr<lr>/seed<seed>): the sweep runs "
                             "at the first, then every seed at the rate it chose; a row is the mean and sample "
                             "standard deviation over seeds. Default: one run at the recipe's seed "
                             "(<out>/<method>/lr<lr>); for --task instruct 0,1,2")
    parser.add_argument("--gen-prompts", type=int, default=16, help="prompts in the generation-speed batch")
    parser.add_argument("--gen-tokens", type=int, default=8, help="new tokens per prompt when timing generation")
    parser.add_argument("--side-by-side-repeats", type=int, default=3,
                        help="timed rounds of the interleaved one-batch step timing of every method (0: skip it)")
    parser.add_argument("--probe", type=Path, default=PROBE_FILE,
                        help="capability probe of the retention columns (text-only, every run and the frozen base)")
    parser.add_argument("--probe-per-category", type=int, default=None, metavar="N",
                        help="score the first N probe questions of each category (default: every question)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config override applied to every method (repeatable)")
    from bench.instruct_compare import add_instruct_arguments  # it builds on this module

    add_instruct_arguments(parser.add_argument_group("--task instruct"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.task == "instruct":
        from bench.instruct_compare import compare_instruct

        return compare_instruct(args)
    check_seeds(args.seeds)
    from mm_excitor.methods import METHODS

    args.methods = args.methods or ["excitor", "lora", "llama_adapter", "prefix"]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)}; one of {', '.join(sorted(METHODS))}")
    args.sweep = sweep_grids(args.sweep, sorted(METHODS))
    return compare(args)


if __name__ == "__main__":
    main()
