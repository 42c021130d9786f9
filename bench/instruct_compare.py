"""The Excitor paper's language-only experiment at this machine's scale (`python -m bench.compare --task instruct`):
SmolLM2-135M-Instruct tuned on low-quality instruction data, its own self-instruct pool (instructions and answers
the model wrote itself, often wrong: `python -m mm_excitor.delia pool`), and what tuning does to what the base
model could already do.

    python -m bench.compare --task instruct --seeds 0,1,2                 # make compare-instruct
    python -m bench.compare --task instruct --methods excitor,lora,base --seeds 0 --steps 30 --sweep 3e-3

Rows (`--methods`, ROWS): the frozen base; the Excitor; LoRA on q and v (r = 16) and on every linear layer;
LLaMA-Adapter; prefix-tuning (peft, text only); and the Excitor and LoRA with DELIA's self-sampled answers mixed in
(R = `--delia-ratio`). Every row trains through the `instruct` task (train_instruct.py, its own process, resumable)
on the same pool split, steps, batch and data order; each row's learning rate is the one with the lowest final
validation loss over the sweep (`--sweep`, default DEFAULT_GRID, run at the first seed), then every seed trains at
that rate. Each run, and the base, is then scored in this process: the capability probe per category
(`eval.probe`, option likelihood through the chat template), the held-out instructions' answer NLL per token
(`tasks.instruct.answer_nll`), and greedy answers to the held-out prompts (their length in tokens and the share
that end with EOS before `--answer-tokens`). Mean and spread over seeds; steps timed side by side in one process
(bench.compare.side_by_side_step_times). Writes `<out>/compare.json`, `compare.md` and `compare.png`.
"""
from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.retention import cached
from mm_excitor.integrity import file_sha256
from mm_excitor.io import atomic_write_jsonl

BASE = "base"
"""The frozen model's row: no training (the Excitor at init, which is the base model exactly)."""


@dataclass(frozen=True)
class Row:
    method: str
    overrides: tuple[str, ...] = ()
    delia: bool = False
    """Whether DELIA's self-sampled answers are mixed in (R = --delia-ratio)."""


ROWS = {
    "excitor": Row("excitor"),
    "lora": Row("lora"),
    "lora_all_linear": Row("lora", ("model.lora.target_modules=[all-linear]",)),
    "llama_adapter": Row("llama_adapter"),
    "text_prefix": Row("text_prefix"),
    "excitor_delia": Row("excitor", delia=True),
    "lora_delia": Row("lora", delia=True),
}
"""Every trained row by name; LoRA is q and v at r = 16 unless the row says otherwise."""
DEFAULT_ROWS = [BASE, *ROWS]
DEFAULT_GRID = [1e-3, 3e-3, 1e-2]
"""The learning rates every row tries when neither --sweep nor --lr names its own (extended past a winning edge)."""
REFERENCE = "lora"
"""The side-by-side step times are given relative to LoRA (q, v): the target is the Excitor at <= 1.0x."""


def add_instruct_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--model", type=Path, default=Path(".cache/smollm2-135m-instruct"),
                       help="the LM to tune, to grow the pool with and to self-sample DELIA's answers")
    group.add_argument("--pool", type=Path, default=None,
                       help="an instruction pool (mm_excitor.delia formats); default: grow the model's own")
    group.add_argument("--pool-size", type=int, default=400, help="records of the grown pool")
    group.add_argument("--val-items", type=int, default=16, help="pool records for the validation loss")
    group.add_argument("--eval-items", type=int, default=32, help="pool records held out for NLL and answers")
    group.add_argument("--delia-ratio", type=float, default=1.0,
                       help="R of the DELIA rows; the training split leaves R x |train| pool queries to sample")
    group.add_argument("--answer-tokens", type=int, default=128, help="max new tokens of each held-out answer")
    group.add_argument("--cache", type=Path, default=Path(".cache/delia"), help="grown pool and DELIA samples")
    group.add_argument("--max-new-tokens", type=int, default=96, help="of each DELIA self-sampled answer")
    group.add_argument("--sample-batch-size", type=int, default=8)
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")


# --- data ----------------------------------------------------------------------------------------------------------

def split_sizes(records: int, val: int, held_out: int, ratio: float) -> dict[str, int]:
    """train / val / eval / delia record counts of a pool: val and eval first, then the training split leaves
    round(R x |train|) queries for DELIA to self-sample, whether or not a DELIA row is run (the same split for
    every command with these settings)."""
    train = math.floor((records - val - held_out) / (1 + ratio))
    while train > 0 and train + round(ratio * train) > records - val - held_out:
        train -= 1
    if train < 1 or val < 1 or held_out < 1:
        raise SystemExit(f"error: a pool of {records} records cannot give {val} validation, {held_out} held-out "
                         f"and a training split with R = {ratio:g} x |train| queries left for DELIA; grow a larger "
                         "pool (--pool-size) or lower --val-items / --eval-items / --delia-ratio")
    return {"train": train, "val": val, "eval": held_out, "delia": round(ratio * train)}


def conversation(record: Any) -> dict[str, Any]:
    """A pool record as one chat-messages line of the instruct task."""
    return {"id": str(record.id), "messages": [{"role": "user", "content": record.query},
                                               {"role": "assistant", "content": record.answer}]}


def prepare_pool(args: argparse.Namespace) -> tuple[Path, list[Any], list[str]]:
    """`--pool`, else the model's own self-instruct pool grown (once, cached) from the tuning seed tasks only: the
    held-out ones (data.heldout) are never shown to it. Either way, a pool record whose query or answer repeats a
    held-out instruction, its answer or a probe question (or is within data.heldout's ROUGE-L of one) is left out.
    Returns the pool's path, the records kept and the ids left out."""
    from bench.delia import delia_command
    from data.heldout import SEED_TASKS, overlaps, protected_texts, split_seed_tasks
    from data.instruct import read_records
    from mm_excitor.delia import load_pool

    pool = args.pool
    if pool is None:
        pool = args.cache / f"pool-tuning-{args.pool_size}.jsonl"
        if not pool.is_file():
            seeds = args.cache / "tuning_seeds.jsonl"
            atomic_write_jsonl(seeds, split_seed_tasks(read_records(SEED_TASKS))[0])
            delia_command("pool", "--model", str(args.model), "--seeds", str(seeds), "--out", str(pool),
                          "--size", str(args.pool_size), "--device", args.device, "--no-progress")
    records = load_pool(pool).records
    found = {name for name, _ in overlaps([(r.id, getattr(r, field)) for r in records for field in ("query", "answer")],
                                           protected_texts(probe=args.probe))}
    return pool, [r for r in records if r.id not in found], sorted(found)


def prepare_data(args: argparse.Namespace, with_delia: bool) -> dict[str, Any]:
    """The pool, its split into chat-messages files under `<out>/data/`, and, when a DELIA row runs, the model's own
    answers to the split's DELIA queries; the run-config overrides that point at them."""
    from bench.delia import prepare_samples

    pool_path, records, left_out = prepare_pool(args)
    sizes = split_sizes(len(records), args.val_items, args.eval_items, args.delia_ratio)
    bounds, start = {}, 0
    for name in ("val", "eval", "train", "delia"):
        bounds[name], start = records[start:start + sizes[name]], start + sizes[name]
    data_dir = args.out / "data"
    files = {name: data_dir / f"{name}.jsonl" for name in ("train", "val", "eval")}
    for name, path in files.items():
        atomic_write_jsonl(path, [conversation(record) for record in bounds[name]])
    overrides = [f"model.language_model={args.model}", f"data.train_files=[{files['train']}]",
                 f"data.val_files=[{files['val']}]", f"data.eval_files=[{files['eval']}]", "data.format=messages"]
    samples = prepare_samples(args, bounds["delia"], pool_path) if with_delia and sizes["delia"] else None
    from bench.delia import shown

    return {"pool": shown(pool_path), "sizes": sizes, "left_out": left_out, "overrides": overrides,
            "delia_overrides": [f"data.delia.samples={samples}", f"data.delia.ratio={args.delia_ratio}"]
            if samples else []}


# --- scoring -------------------------------------------------------------------------------------------------------

def answer_stats(new_tokens: Any, eos_token_id: int, max_new_tokens: int) -> list[dict[str, Any]]:
    """Per row of `generate_tokens`' output: the answer's length in tokens (up to its EOS) and whether it stopped
    (EOS before `max_new_tokens`)."""
    stats = []
    for row in new_tokens.tolist():
        stopped = eos_token_id in row
        stats.append({"tokens": row.index(eos_token_id) if stopped else max_new_tokens, "stopped": stopped})
    return stats


def score_model(model: Any, collator: Any, dataset: Any, args: argparse.Namespace) -> dict[str, Any]:
    """What `model` kept and learnt: the capability probe per category and the held-out human-written
    instructions' answer NLL (eval.probe), the tuning pool's held-out answers' NLL (tasks.instruct), and the greedy
    answers to those held-out prompts: their length in tokens and the share that stop (EOS) in time."""
    from data.heldout import heldout_instructions
    from bench.retention import probe_questions
    from eval.probe import answer_nll, score_probe
    from mm_excitor.decoding import Decoding
    from tasks.instruct import answer_nll as pool_answer_nll

    model.eval()
    items = [item for item in (dataset[i] for i in range(len(dataset))) if item is not None]
    decoding = Decoding(max_new_tokens=args.answer_tokens)
    answers = []
    for start in range(0, len(items), 8):
        chunk = items[start:start + 8]
        prompts = collator.prompts(chunk).to(model.device)
        new = model.generate_tokens(**prompts.inputs, decoding=decoding)
        texts = [t.strip() for t in model.tokenizer.batch_decode(new, skip_special_tokens=True)]
        for item, text, stats in zip(chunk, texts, answer_stats(new, model.tokenizer.eos_token_id,
                                                                 args.answer_tokens)):
            answers.append({"id": item["meta"]["id"], "text": text, **stats})
    probe = score_probe(model, model.tokenizer, probe_questions(args.probe, args.probe_per_category))
    return {
        "heldout_nll": answer_nll(model, model.tokenizer, heldout_instructions()),
        "pool_nll": pool_answer_nll(model, dataset, collator, 8)["answer_nll"],
        "answer_tokens": statistics.fmean(a["tokens"] for a in answers),
        "stopped": 100.0 * statistics.fmean(a["stopped"] for a in answers),
        "probe": {"accuracy": {c: v["accuracy"] for c, v in sorted(probe["categories"].items())},
                  "chance": {c: v["chance"] for c, v in sorted(probe["categories"].items())},
                  "all": probe["accuracy"]},
        "answers": answers,
    }


def score_run(run_dir: Path, args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    from tasks.run import load_run

    def score() -> dict[str, Any]:
        run = load_run("instruct", run_dir, device=args.device)
        return score_model(run.model, run.collator, run.dataset, args)

    return cached(run_dir / "instruct_scores.json", settings, score)


def score_base(preset: Any, overrides: list[str], args: argparse.Namespace, settings: dict[str, Any]) -> dict:
    """The frozen model's scores: the Excitor at init (zero gates: the base model bit for bit)."""
    from bench.compare import REPO

    def score() -> dict[str, Any]:
        import torch

        from mm_excitor.recipe import load_config
        from mm_excitor.train import init_distributed
        from tasks import get_task
        from tasks.run import build

        task = get_task("instruct")
        config = load_config(task.config_class, REPO / preset.recipe,
                             [*preset.overrides, *overrides, "model.method=excitor"])
        torch.manual_seed(config.train.seed)
        model, data = build(task, config, init_distributed(args.device).device, ("eval",))
        return score_model(model, task.collator(model.tokenizer, config, data), data.eval, args)

    return cached(args.out / BASE / "instruct_scores.json", settings, score)


# --- runs ----------------------------------------------------------------------------------------------------------

def train_row(name: str, args: argparse.Namespace, preset: Any, steps: int, overrides: list[str]) -> dict[str, Any]:
    """The row's sweep at the first seed (the lowest final validation loss picks the rate), then its other seeds at
    that rate (bench.compare.train_seeds); each run's directory `<out>/<row>/lr<lr>/seed<seed>`."""
    from bench.compare import candidate_rates, train_seeds

    row = ROWS[name]
    trained = train_seeds(preset, row.method, name, candidate_rates(args, name, DEFAULT_GRID), args.sweep_extend,
                          args.seeds, steps, args.out / name, [*overrides, *row.overrides], evaluate=False)
    return {"lr": trained.lr, "val_loss": {f"{rate:g}": loss for rate, (_, _, loss) in trained.sweep.items()},
            "runs": {seed: run_dir for seed, (run_dir, _) in trained.runs.items()}}


def without_answers(scores: dict[str, Any]) -> dict[str, Any]:
    """A run's scores as the table keeps them (its answers stay in the run's instruct_scores.json)."""
    return {key: value for key, value in scores.items() if key != "answers"}


def spread(values: list[float]) -> dict[str, float]:
    from bench.compare import mean_and_spread

    mean, std = mean_and_spread(values)
    return {"mean": mean, "std": std}


def summarise(scores: list[dict[str, Any]], base: dict[str, Any] | None) -> dict[str, Any]:
    """Mean and spread over seeds of every column, and each one's change against the frozen base."""
    categories = sorted(scores[0]["probe"]["accuracy"])

    def column(read: Callable[[dict[str, Any]], float]) -> dict[str, float]:
        out = spread([read(s) for s in scores])
        if base is not None:
            out["vs_base"] = out["mean"] - read(base)
        return out

    return {
        "heldout_nll": column(lambda s: s["heldout_nll"]),
        "pool_nll": column(lambda s: s["pool_nll"]),
        "answer_tokens": column(lambda s: s["answer_tokens"]),
        "stopped": column(lambda s: s["stopped"]),
        "probe": {category: column(lambda s, c=category: s["probe"]["accuracy"][c]) for category in categories},
        "probe_all": column(lambda s: s["probe"]["all"]),
    }


def compare_instruct(args: argparse.Namespace) -> dict[str, Any]:
    from bench.compare import (
        PRESETS, REPO, check_seeds, side_by_side_step_times, sweep_grids, trainable_parameters, write_report,
    )
    from bench.delia import shown

    preset = PRESETS["instruct"]
    args.methods = args.methods or DEFAULT_ROWS
    unknown = [name for name in args.methods if name != BASE and name not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown row(s) {', '.join(unknown)}; one of {', '.join([BASE, *ROWS])}")
    args.sweep = sweep_grids(args.sweep, list(ROWS))
    args.seeds = args.seeds if args.seeds is not None else [0, 1, 2]
    check_seeds(args.seeds)
    for name in ("model", "pool", "cache", "probe"):  # the runs' processes start in the repository root
        value = getattr(args, name)
        if value is not None and not value.is_absolute():
            setattr(args, name, Path.cwd() / value)
    args.out = (args.out or REPO / "runs" / "compare" / "instruct").absolute()
    args.cache.mkdir(parents=True, exist_ok=True)
    steps = args.steps or preset.steps
    data = prepare_data(args, with_delia=any(ROWS[n].delia for n in args.methods if n != BASE))
    overrides = [*data["overrides"], f"train.eval_every_steps={steps}", f"train.device={args.device}",
                 *args.override]
    # "probe_limit" is the cached scores' key from before --probe-per-category: scores cached under it stay valid
    settings = {"answer_tokens": args.answer_tokens, "probe_sha256": file_sha256(args.probe),
                "probe_limit": args.probe_per_category}
    base = score_base(preset, overrides, args, settings) if BASE in args.methods else None
    rows, learning_rates = [], {}
    if base is not None:
        rows.append({"row": BASE, "method": None, "lr": None, "seeds": [], "trainable_parameters": 0,
                     **summarise([base], None), "scores": [without_answers(base)]})
    for name in (n for n in args.methods if n != BASE):
        row = ROWS[name]
        trained = train_row(name, args, preset, steps, [*overrides, *(data["delia_overrides"] if row.delia else [])])
        learning_rates[name] = trained["val_loss"]
        scores = [score_run(run_dir, args, settings) for run_dir in trained["runs"].values()]
        first = next(iter(trained["runs"].values()))
        rows.append({"row": name, "method": row.method, "lr": trained["lr"], "seeds": args.seeds,
                     "trainable_parameters": trainable_parameters(first, steps), **summarise(scores, base),
                     "scores": [without_answers(s) for s in scores],
                     "runs": [shown(p) for p in trained["runs"].values()]})
    timed = [n for n in args.methods if n != BASE and not ROWS[n].delia]  # DELIA changes the data, not the step
    if args.side_by_side_repeats and timed:
        chosen = {entry["row"]: entry["lr"] for entry in rows}
        times = side_by_side_step_times(
            preset, {n: [*overrides, f"model.method={ROWS[n].method}", *ROWS[n].overrides, f"train.lr={chosen[n]}"]
                     for n in timed}, args.side_by_side_repeats)
        for entry in rows:
            if entry["row"] in times:
                entry["step_s_side_by_side"] = times[entry["row"]]
    results = {"task": "instruct", "recipe": preset.recipe, "steps": steps, "seeds": args.seeds,
               "pool": data["pool"], "split": data["sizes"], "left_out": data["left_out"],
               "delia_ratio": args.delia_ratio,
               "answer_tokens": args.answer_tokens, "overrides": args.override, "rows": rows,
               "learning_rates": learning_rates}
    write_report(args.out / "compare", results, markdown, plot)
    return results


# --- reports -------------------------------------------------------------------------------------------------------

def cell(column: dict[str, float], digits: int = 1, change: bool = True) -> str:
    text = f"{column['mean']:.{digits}f}"
    if column["std"]:
        text += f" ± {column['std']:.{digits}f}"
    if change and "vs_base" in column:
        text += f" ({column['vs_base']:+.{digits}f})"
    return text


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    categories = list(rows[0]["probe"])
    reference = next((r for r in rows if r["row"] == REFERENCE and "step_s_side_by_side" in r), None)
    chance = rows[0]["scores"][0]["probe"]["chance"]
    header = ["row", "lr", "trainable params", *[f"probe {c} % (chance {chance[c]:.0f})" for c in categories],
              "probe all %", "held-out NLL", "pool NLL", "answer tokens", "stops %",
              f"step / {REFERENCE}'s, side by side"]
    split = results["split"]
    lines = [f"instruct: {results['steps']} steps per run, seeds {', '.join(map(str, results['seeds']))}; pool "
             f"{results['pool']} ({split['train']} train, {split['val']} val, {split['eval']} held out; "
             f"{len(results['left_out'])} left out as repeating held-out text); DELIA rows "
             f"R = {results['delia_ratio']:g}. Mean ± sample standard deviation over seeds (change against the "
             "frozen base). Held-out NLL: human-written held-out instructions (data.heldout); pool NLL: the pool's "
             "held-out records; "
             f"answers: greedy, at most {results['answer_tokens']} new tokens.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        side = "-"
        if reference is not None and "step_s_side_by_side" in row:
            side = f"{row['step_s_side_by_side'] / reference['step_s_side_by_side']:.2f}"
        cells = [row["row"], "-" if row["lr"] is None else f"{row['lr']:g}", f"{row['trainable_parameters']:,}",
                 *[cell(row["probe"][c]) for c in categories], cell(row["probe_all"]),
                 cell(row["heldout_nll"], 3), cell(row["pool_nll"], 3), cell(row["answer_tokens"], 1, change=False),
                 cell(row["stopped"], 1, change=False), side]
        lines.append("| " + " | ".join(cells) + " |")
    if any(len(losses) > 1 for losses in results["learning_rates"].values()):
        lines += ["", "Learning rates tried at the first seed (the lowest final validation loss is the row's):", "",
                  "| row | learning rate: final validation loss |", "|---|---|"]
        for name, losses in results["learning_rates"].items():
            tried = ", ".join(f"{lr}: {loss:.4f}" for lr, loss in sorted(losses.items(), key=lambda i: float(i[0])))
            lines.append(f"| {name} | {tried} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = [row["row"] for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "probe_all", "capability probe, accuracy %"),
                           (axes[1], "heldout_nll", "held-out instructions: answer NLL per token")):
        ax.bar(names, [row[key]["mean"] for row in rows], yerr=[row[key]["std"] for row in rows], capsize=3)
        base = next((row[key]["mean"] for row in rows if row["row"] == BASE), None)
        if base is not None:
            ax.axhline(base, color="grey", linestyle="--", label="frozen base")
            ax.legend(fontsize=8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"instruct: {results['steps']} steps, seeds {results['seeds']}, tuned on the model's own pool",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
