"""Where an Excitor's token-to-prompt affinity stands, layer by layer, for a run at init or after training.

    .venv/bin/python -m experiments.affinity --task caption --run runs/demo                   # its latest checkpoint
    .venv/bin/python -m experiments.affinity --task caption --run runs/demo --init            # as training started
    .venv/bin/python -m experiments.affinity --task caption --run runs/demo --init \\
        --override model.excitor.affinity_init_gain=0.3333                               # nn.Linear's default init

A uniform affinity shifts every key of a sample by one vector, which the attention softmax ignores: only the
token-to-token differences of the shift `g * W_k (a . P)` reach the attention weights (docs/design.md, "The affinity
must not start uniform"). For the first `--examples` prompts of the run's eval split (with their images), forward
hooks on every Excitor block read the affinity through `mm_excitor.methods.excitor.layer.affinity_view` and report per layer:

- `logit_spread`: max minus min affinity logit over the prompts a token may weigh, mean over tokens;
- `entropy_pct`: the affinity's entropy as % of the uniform one's (100: every prompt weighed alike);
- `visual_pct`: % of the affinity on the visual prompts (concat mode; the rest is on the learnable ones);
- `mix_varying_pct`: RMS of `W_k (m - mean m)` over RMS of `W_k x` (m = a . P, the mean over the sample's tokens):
  the token-varying part of the key shift before the gate, relative to the key;
- `shift_varying_pct`: the same after the gate (0 at init, where g = 0);
- `gate_abs`: mean |g| over the layer's KV heads;
- in the JSON also `prompts` (K' a token may weigh, mean over tokens) and `learnable_prompts`.

Writes the table and JSON (default: `<run>/affinity/<init|checkpoint name>.json`).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.timing import write_results  # noqa: E402
from mm_excitor.cli import run_cli  # noqa: E402
from mm_excitor.methods.excitor.layer import AffinityView, ExcitorKeyProjection, affinity_view  # noqa: E402
from mm_excitor.train import init_distributed, seed_everything  # noqa: E402
from tasks import TASKS, get_task  # noqa: E402
from tasks.run import build, load_run, read_run_config  # noqa: E402

COLUMNS = ("logit_spread", "entropy_pct", "visual_pct", "mix_varying_pct", "shift_varying_pct", "gate_abs")


def layer_statistics(block: ExcitorKeyProjection, hidden: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """The module docstring's figures for one block's input `hidden` (B x M x C) and the visual prompts of its
    call; `tokens` (B x M bool) marks the real (non-padding) tokens."""
    view: AffinityView = affinity_view(block, hidden, block.call_prompts)
    with torch.no_grad():
        logits, valid = view.logits[tokens], view.logits[tokens].isfinite()
        spread = logits.masked_fill(~valid, -math.inf).amax(-1) - logits.masked_fill(~valid, math.inf).amin(-1)
        affinity = logits.softmax(dim=-1)
        entropy = -(affinity * affinity.clamp_min(1e-30).log()).sum(-1)
        uniform = valid.sum(-1).clamp_min(2).float().log()
        weights = tokens[..., None].float()
        mean_mix = (view.mixes * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1)
        varying = view.mixes - mean_mix  # the extra keys' token-to-token part, in key space
        if block.extra_key == "projected":
            varying = F.linear(varying, block.base.weight.float())
        varying = varying[tokens]
        gate = block.gate_values().float()
        gated = (varying.unflatten(-1, (gate.shape[0], -1)) * gate[:, None]).flatten(-2)
        key_rms = _rms(block.base(hidden.to(block.base.weight.dtype)).float()[tokens])
        return {
            "logit_spread": float(spread.mean()),
            "entropy_pct": float(100 * (entropy / uniform).mean()),
            "visual_pct": float(100 * affinity[:, view.num_shared:].sum(-1).mean()),
            "mix_varying_pct": float(100 * _rms(varying) / key_rms),
            "shift_varying_pct": float(100 * _rms(gated) / key_rms),
            "gate_abs": float(gate.abs().mean()),
            "prompts": float(valid.sum(-1).float().mean()), "learnable_prompts": view.num_shared,
        }


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.pow(2).mean().sqrt()


def named_blocks(model: torch.nn.Module) -> list[tuple[str, ExcitorKeyProjection]]:
    """(decoder layer index, block) of every Excitor block, bottom to top."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, ExcitorKeyProjection):
            index = re.search(r"layers\.(\d+)\.", name)
            found.append((index.group(1) if index else name, module))
    return found


def measure(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One forward of `batch` (a prompts batch of the task's collator) with hooks on every Excitor block."""
    blocks = named_blocks(model)
    if not blocks:
        raise ValueError("the model has no Excitor blocks (model.method is not excitor): there is no affinity to read")
    tokens = batch["attention_mask"].bool()
    rows: list[dict[str, Any]] = []

    def hook(layer: str):
        def read(block: ExcitorKeyProjection, args: tuple, output: torch.Tensor) -> None:
            rows.append({"layer": layer, **layer_statistics(block, args[0], tokens)})
        return read

    handles = [block.register_forward_hook(hook(layer)) for layer, block in blocks]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| layer | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(f"| {row['layer']} | " + " | ".join(f"{row[c]:.3g}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--run", required=True, type=Path, help="a run's output_dir (its stored run config)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the run's latest checkpoint")
    parser.add_argument("--init", action="store_true", help="the adapter as training started (the run's seed)")
    parser.add_argument("--examples", type=int, default=16, help="prompts of the eval split read (one batch)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config override (repeatable), e.g. model.excitor.affinity_init_gain=0.3333")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.init and args.checkpoint is not None:
        parser.error("--init reads the adapter as training started: it takes no --checkpoint")
    if args.examples < 1:
        parser.error(f"--examples must be >= 1, got {args.examples}")
    task = get_task(args.task)
    if args.init:
        config = read_run_config(task, args.run, args.override)
        dist = init_distributed(args.device)
        seed_everything(config.train.seed)  # as training does before building: the run's initial adapter
        model, data = build(task, config, dist.device, ("eval",))
        collator, state = task.collator(model.tokenizer, config, data), "init"
        model.eval()
    else:
        run = load_run(task, args.run, args.checkpoint, overrides=args.override, device=args.device)
        model, data, collator, state = run.model, run.data, run.collator, run.checkpoint.name
    items = [item for item in (data.eval[i] for i in range(min(args.examples, len(data.eval)))) if item is not None]
    if not items:
        raise ValueError(f"no readable item among the first {args.examples} of the eval split")
    batch = collator.prompts(items).to(model.device)
    rows = measure(model, batch.inputs)
    means = {c: sum(r[c] for r in rows) / len(rows) for c in COLUMNS}
    results = {
        "run": str(args.run), "state": state, "overrides": args.override, "examples": len(items),
        "tokens": int(batch.inputs["attention_mask"].sum()), "layers": rows, "mean": means,
        "table": format_table([*rows, {"layer": "mean", **means}]),
        "environment": {"wall_s": time.perf_counter() - start},
    }
    out = args.out or args.run / "affinity" / f"{state}.json"
    write_results(results, out, args.quiet)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
