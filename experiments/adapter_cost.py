"""What each adapter adds to one attention block's projections, over a sweep of tokens per micro-batch.

    .venv/bin/python experiments/adapter_cost.py                         # LLaMA-7B projections, JSON to experiments/results/
    .venv/bin/python experiments/adapter_cost.py --shape smollm2-135m --tokens 128,1024

A whole training step (bench/excitor_overhead.py) is dominated by the frozen model, whose noise hides a few
milliseconds of adapter work. Here only the adapters' own work is timed, side by side: the Excitor on k_proj (one
variant per association of W_k, `--associations`) and LoRA (peft, r=16) on q_proj and v_proj of one LLaMA-shaped
attention block, forward and backward, with the gradient going on to the layer below (as in every adapted layer but
the lowest). The frozen q and v projections return a stored output instead of multiplying: that matmul and its
input gradient are the same work in every variant, so leaving them out removes their noise without favouring any.
The frozen k_proj is real in every variant, because the Excitor's token side computes it itself (forward and input
gradient, fused with its own work): each variant's adapter time is its time minus that of the bare frozen
projections, timed in the same rounds. Memory is what autograd saves for each adapter plus its trainable state
(parameters, grads and two AdamW moments: 16 bytes per fp32 parameter).

Both costs are close to linear in the tokens T, `fixed + per_token * T`: the prompt side's fixed part is the
prompt keys W_k P and their gradient (3 K C C_kv multiply-adds per layer and step, whatever T), LoRA's is almost
nothing, the token side has no fixed part but more per token. The fitted lines give the crossover: the micro-batch
size from which the Excitor costs less than LoRA. CUDA runs bf16 under autocast; this benchmark reports no MFU
(there is no frozen LM here, only three projections).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.timing import (  # noqa: E402
    argument_parser, gpu_accounting, interleaved, report, runtime_environment, setup_device, share_frozen_copy,
    storages_saved_for_backward,
)
from mm_excitor import ExcitorConfig  # noqa: E402
from mm_excitor.methods.excitor.layer import ExcitorKeyProjection  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "adapter_cost.json"
SHAPES = {
    "llama7b": dict(hidden=4096, heads=32, kv_heads=32),
    "smollm2-135m": dict(hidden=576, heads=9, kv_heads=3),
}
LORA = dict(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
ADAMW_STATE_BYTES_PER_PARAM = 16  # fp32 parameter, its gradient and AdamW's two moments
GATE_VALUE = 0.1


class PrecomputedLinear(nn.Linear):
    """A frozen projection that returns a stored output (set per token count) instead of multiplying."""

    output: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output


class Projections(nn.Module):
    """The frozen q/k/v projections of one attention block (names as in Hugging Face LLaMA); q and v precomputed."""

    def __init__(self, hidden: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        kv_width = hidden // heads * kv_heads
        self.q_proj = PrecomputedLinear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, kv_width, bias=False)
        self.v_proj = PrecomputedLinear(hidden, kv_width, bias=False)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.q_proj(x), self.k_proj(x), self.v_proj(x)]


def set_outputs(model: nn.Module, x: torch.Tensor) -> None:
    """Store what each frozen projection of `model` returns for input `x` (random: only the shapes matter)."""
    for module in model.modules():
        if isinstance(module, PrecomputedLinear):
            module.output = torch.randn(*x.shape[:-1], module.out_features, device=x.device, dtype=x.dtype)


def variant_name(association: str) -> str:
    return "excitor" if association == "auto" else f"excitor_{association}_side"


def variants(
    shape: dict[str, int], device: torch.device, dtype: torch.dtype, associations: list[str]
) -> tuple[Projections, dict[str, nn.Module]]:
    """The frozen projections (in `dtype`) and adapted copies sharing them: an Excitor on k_proj per association,
    LoRA on q/v. The adapters create their trainable tensors in fp32 whatever the frozen dtype (peft upcasts its
    LoRA weights); every Excitor variant gets the same weights."""
    from peft import LoraConfig, get_peft_model

    with torch.device(device):
        frozen = Projections(**shape).to(dtype)
    models: dict[str, nn.Module] = {}
    for association in associations:
        excitor = share_frozen_copy(frozen)
        torch.manual_seed(0)
        excitor.k_proj = ExcitorKeyProjection(frozen.k_proj, shape["kv_heads"],
                                              ExcitorConfig(key_association=association))
        with torch.no_grad():
            excitor.k_proj.gate.fill_(GATE_VALUE)
        models[variant_name(association)] = excitor
    models["lora"] = get_peft_model(share_frozen_copy(frozen), LoraConfig(**LORA))
    return frozen, models


def saved_bytes(model: nn.Module, run: Callable[[], Any]) -> int:
    """Unique bytes autograd saves during `run` (parameters and buffers excluded)."""
    return sum(storages_saved_for_backward(run, (*model.parameters(), *model.buffers())).values())


def fit_line(tokens: list[int], values: list[float]) -> dict[str, float]:
    """Least-squares `fixed + per_token * tokens`."""
    mean_t, mean_v = statistics.fmean(tokens), statistics.fmean(values)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in zip(tokens, values)) / sum((t - mean_t) ** 2 for t in tokens)
    return {"fixed": mean_v - slope * mean_t, "per_token": slope}


def crossover(excitor: dict[str, float], lora: dict[str, float]) -> float | None:
    """Tokens from which the Excitor's line lies below LoRA's (None: never, on these lines)."""
    if excitor["per_token"] >= lora["per_token"]:
        return None if excitor["fixed"] > lora["fixed"] else 0.0
    return max(0.0, (excitor["fixed"] - lora["fixed"]) / (lora["per_token"] - excitor["per_token"]))


def measure(frozen: Projections, models: dict[str, nn.Module], tokens: int, args: argparse.Namespace,
            device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    hidden = frozen.q_proj.in_features
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(1, tokens, hidden, generator=generator).to(device, dtype)
    for model in (frozen, *models.values()):
        set_outputs(model, x)
    grads = [torch.randn_like(out) for out in frozen(x)]

    def step(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            inputs = x.detach().requires_grad_(True)  # the gradient goes on to the layer below
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                outputs = model(inputs)
            pairs = [(out, grad) for out, grad in zip(outputs, grads) if out.requires_grad]
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
            model.zero_grad(set_to_none=True)
        return run

    runs = {"frozen": step(frozen), **{name: step(model) for name, model in models.items()}}
    wall, cpu = interleaved(runs, args.warmup, args.repeats, device)
    # On a CPU the process CPU time: the differences measured here are a few percent of the frozen projection's
    # time, which the wall clock of a shared machine does not resolve.
    samples = cpu if cpu is not None else wall
    medians = {name: statistics.median(values) for name, values in samples.items()}
    association = models["excitor"].k_proj.fast.training_association(x) if "excitor" in models else None
    return {
        "tokens": tokens,
        "frozen_s": medians["frozen"],
        "adapter_s": {name: medians[name] - medians["frozen"] for name in models},
        "samples_s": samples,
        "wall_samples_s": wall,
        "saved_bytes": {name: saved_bytes(model, runs[name]) for name, model in models.items()},
        "auto_association": association,
    }


def trainable_state_bytes(model: nn.Module) -> int:
    return ADAMW_STATE_BYTES_PER_PARAM * sum(p.numel() for p in model.parameters() if p.requires_grad)


def format_table(results: dict[str, Any]) -> str:
    names = [n for n in results["sweep"][0]["adapter_s"] if n != "lora"]
    labels = {n: results["labels"][n] for n in names}
    rows = ["| tokens per micro-batch | frozen k_proj | "
            + " | ".join(f"Excitor {labels[n]}" for n in names)
            + " | LoRA | " + " | ".join(f"{labels[n]} / LoRA time" for n in names)
            + " | Excitor memory | LoRA memory | Excitor / LoRA memory |",
            "|" + "---|" * (5 + 2 * len(names) + 1)]
    for row in results["sweep"]:
        times, mem = row["adapter_s"], row["memory_bytes"]
        memory_name = "excitor" if "excitor" in mem else names[0]
        rows.append(
            f"| {row['tokens']:,} | {row['frozen_s'] * 1e3:.1f} ms | "
            + " | ".join(f"{times[n] * 1e3:.1f} ms" for n in names)
            + f" | {times['lora'] * 1e3:.1f} ms | "
            + " | ".join(f"{times[n] / times['lora']:.2f}" for n in names)
            + f" | {mem[memory_name] / 2**10:,.0f} KiB | {mem['lora'] / 2**10:,.0f} KiB | "
            f"{mem[memory_name] / mem['lora']:.2f} |"
        )
    fits, env = results["fits"], results["environment"]
    lines = [*rows, ""]
    for name in names:
        for what, unit, scale in (("time", "ms", 1e3), ("memory", "KiB", 2**-10)):
            fit = fits[name][what]
            e, l = fit["excitor"], fit["lora"]
            cross, measured = fit["crossover_tokens"], fit["measured_at_or_below_lora_from_tokens"]
            lines.append(
                f"- {labels[name]}, {what}: Excitor {e['fixed'] * scale:.1f} {unit} + {e['per_token'] * scale * 1000:.2f} "
                f"{unit} per 1000 tokens; LoRA {l['fixed'] * scale:.1f} {unit} + {l['per_token'] * scale * 1000:.2f} "
                f"{unit} per 1000 tokens; the fitted lines cross at "
                + (f"{cross:,.0f} tokens" if cross is not None else "no size")
                + "; measured, the Excitor costs no more than LoRA from "
                + (f"**{measured:,} tokens** per micro-batch on" if measured is not None else "**no** measured size")
            )
    if any(row.get("auto_association") for row in results["sweep"]):
        lines.append("- auto chose: " + ", ".join(f"{row['tokens']:,} tokens -> {row['auto_association']} side"
                                                  for row in results["sweep"]))
    lines.append(
        f"\n{results['shape']} projections (hidden {results['shape_config']['hidden']}, "
        f"{results['shape_config']['kv_heads']} KV heads), per layer; torch {env['torch']}, {env['device']} "
        f"({env['device_name']}), {env['torch_threads']} thread(s), {env['dtype']}, {env['warmup']} warm-up + "
        f"{env['repeats']} interleaved repeats, medians of {env['time_basis']}; adapter time = variant - frozen "
        "projections (q, v stored, k real), timed in the same rounds. Memory = saved activations + 16 bytes per "
        "trainable parameter.\n"
        f"Command: `{env['command']}`"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama7b")
    parser.add_argument("--tokens", default="128,256,512,1024,2048,4096",
                        help="comma-separated tokens per micro-batch (batch x sequence)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="frozen weights and autocast dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--associations", default="auto,prompt,token",
                        help="comma-separated associations of W_k to time side by side (auto, prompt, token)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command_args = sys.argv[1:] if argv is None else argv
    device = setup_device(args.threads, args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--tokens takes comma-separated whole numbers, got {args.tokens!r}") from None
    if len(set(tokens)) < 2 or min(tokens) < 1:
        raise SystemExit("--tokens needs at least two different positive sizes to fit the cost lines")
    associations = [a.strip() for a in args.associations.split(",") if a.strip()]
    if not associations or any(a not in ("auto", "prompt", "token") for a in associations):
        raise SystemExit("--associations takes a comma-separated subset of auto, prompt, token")
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    frozen, models = variants(SHAPES[args.shape], device, dtype, associations)
    state = {name: trainable_state_bytes(model) for name, model in models.items()}
    sweep = []
    for count in tokens:
        row = measure(frozen, models, count, args, device, dtype)
        row["memory_bytes"] = {name: row["saved_bytes"][name] + state[name] for name in state}
        sweep.append(row)
        if not args.quiet:
            print(f"[{count} tokens] frozen {row['frozen_s'] * 1e3:.1f} ms; adapters "
                  + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row["adapter_s"].items()), flush=True)
    fits: dict[str, dict[str, Any]] = {}
    for name in (n for n in models if n != "lora"):
        fits[name] = {}
        for what, key in (("time", "adapter_s"), ("memory", "memory_bytes")):
            lines = {side: fit_line(tokens, [row[key][model] for row in sweep])
                     for side, model in (("excitor", name), ("lora", "lora"))}
            below = [row[key][name] <= row[key]["lora"] for row in sweep]
            # The smallest measured size from which the Excitor costs no more than LoRA at every larger one.
            from_tokens = next((row["tokens"] for i, row in enumerate(sweep) if all(below[i:])), None)
            fits[name][what] = {**lines, "crossover_tokens": crossover(lines["excitor"], lines["lora"]),
                                "measured_at_or_below_lora_from_tokens": from_tokens}
    results = {
        "environment": {
            **runtime_environment(device), "dtype": str(dtype).replace("torch.", ""), "warmup": args.warmup,
            "time_basis": "process CPU time" if device.type == "cpu" else "wall-clock time (synchronised)",
            "repeats": args.repeats, "command": " ".join(["python", "experiments/adapter_cost.py", *command_args]),
        },
        "shape": args.shape,
        "shape_config": SHAPES[args.shape],
        "excitor_config": ExcitorConfig().to_dict(),
        "labels": {variant_name(a): ("auto" if a == "auto" else f"{a} side") for a in associations},
        "gpu": gpu_accounting(device, None),
        "lora_config": LORA,
        "trainable_state_bytes": state,
        "sweep": sweep,
        "fits": fits,
    }
    return report(results, format_table, args.out, args.quiet, time.perf_counter() - start)


if __name__ == "__main__":
    main()
