"""Excitor overhead vs the frozen base model and vs LoRA, measured side by side in one process.

    .venv/bin/python bench/excitor_overhead.py                      # both shapes, JSON to bench/results/
    .venv/bin/python bench/excitor_overhead.py --shapes smollm2-135m --repeats 3

For every shape (random init, nothing is downloaded):
- inference forward time (torch.no_grad, eval, use_cache=False): frozen base model vs the same model with
  Excitor blocks whose gates are set to a non-zero value;
- training step time (zero_grad + forward with LM loss + backward + AdamW step): Excitor vs LoRA
  (peft, r=16, alpha=16, q_proj and v_proj, no dropout), each on a copy of the same base model;
- peak memory of one such training step (see `MEMORY_DEFINITION`), Excitor vs LoRA;
- trainable parameters of Excitor, LoRA and (if peft's implementation runs on this transformers) AdaptionPrompt.

Timed runs are interleaved (A, B, A, B, ...) after warm-up and reported as medians, so that machine noise hits
both sides alike. The three models share the frozen weight tensors (they are never modified), so only one copy
of the base weights is resident. CPU runs fp32; CUDA runs the frozen model in bf16 (adapter weights stay fp32).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from bench.timing import (  # noqa: E402
    format_seconds, interleaved, runtime_environment, setup_device, share_frozen_copy, summary, synchronize,
    write_results,
)
from mm_excitor import ExcitorConfig, apply_excitor, count_parameters, excitor_blocks, visual_prompts  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "excitor_overhead.json"
GATE_VALUE = 0.1
LORA = dict(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
TARGETS = {"forward_overhead_max": 0.05, "step_time_ratio_max": 1.0, "peak_memory_ratio_max": 1.0}

MEMORY_DEFINITION = (
    "peak_step_bytes = resident_bytes + peak_increment_bytes. resident_bytes: unique storages of the model's "
    "parameters and buffers (the shared frozen base included, counted once) plus the AdamW state, all live when "
    "the step starts (grads are None: zero_grad(set_to_none=True)). peak_increment_bytes: the highest level, above "
    "the level at the step's start, of tensor bytes held by torch's allocator during one training step "
    "(forward, backward, AdamW step): on CUDA torch.cuda.max_memory_allocated() - memory_allocated() at the start; "
    "on CPU the running sum of the CPU/MKLDNN allocation and free events that torch.profiler(profile_memory=True) "
    "records (allocations that bypass torch's allocator, e.g. oneDNN/BLAS scratch, are not seen). "
    "saved_activation_bytes: unique storages saved for backward (torch.autograd.graph.saved_tensors_hooks), "
    "parameters and buffers excluded."
)


def shapes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The benchmarked model shapes; batch and sequence length come from the CLI."""
    return {
        "smollm2-135m": dict(
            model=dict(
                hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                max_position_embeddings=8192,
            ),
            excitor=dict(num_layers=28, num_prompts=30, rank=16),
            batch=args.smollm2_batch, seq=args.smollm2_seq,
            note="SmolLM2-135M shape, all 30 layers, full vocabulary (tied embeddings); Excitor on the top 28",
        ),
        "llama7b-layers": dict(
            model=dict(
                hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.llama7b_layers,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=args.llama7b_vocab,
                tie_word_embeddings=False, rope_theta=10000.0, max_position_embeddings=4096,
            ),
            excitor=dict(num_layers=args.llama7b_layers, num_prompts=30, rank=16),
            batch=args.llama7b_batch, seq=args.llama7b_seq,
            note=(
                f"LLaMA-7B layer shape (MHA, 4096/11008), only {args.llama7b_layers} decoder layers, all adapted; "
                f"vocabulary shrunk from 32000 to {args.llama7b_vocab} so that embedding/LM head (identical for "
                "all variants) do not dilute the per-layer ratios: the ratios are per-layer, i.e. an upper bound "
                "for the 32-layer model"
            ),
        ),
        "tiny": dict(
            model=dict(
                hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False, max_position_embeddings=256,
            ),
            excitor=dict(num_layers=2, num_prompts=5, rank=4),
            batch=2, seq=16,
            note="tiny smoke-test shape; its numbers mean nothing",
        ),
    }


# ---------------------------------------------------------------------------------------------------- helpers


def storage_bytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def resident_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return storage_bytes([*model.parameters(), *model.buffers(), *state])


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def ratio(a: dict[str, Any], b: dict[str, Any], key: str = "median_s") -> float | None:
    return a[key] / b[key] if key in a and key in b else None


class SavedTensorBytes:
    """Unique bytes of the tensors autograd saves for backward, parameters and buffers excluded.

    Only pointers and sizes are recorded (keeping the tensors would change the step's memory profile). All saved
    tensors are alive together until backward, so a storage pointer identifies one storage.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.exclude:
            self.storages[ptr] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def measure_step_memory(model, step: Callable[[], None], optimizer, device: torch.device) -> dict[str, int]:
    """Peak memory of one training step, as `MEMORY_DEFINITION` says."""
    optimizer.zero_grad(set_to_none=True)  # free last step's grads outside the measured region
    saved = SavedTensorBytes(model)
    resident = resident_bytes(model, optimizer)
    hooks = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        with hooks:
            step()
        synchronize(device)
        increment = torch.cuda.max_memory_allocated(device) - start
        absolute = torch.cuda.max_memory_allocated(device)
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, hooks:
            step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        level = increment = 0
        for event in events:
            if str(event.device_type()).rsplit(".", 1)[-1] in ("CPU", "MKLDNN", "IDEEP"):
                level += event.nbytes()
                increment = max(increment, level)
        absolute = None
    result = {
        "peak_step_bytes": resident + increment,
        "resident_bytes": resident,
        "peak_increment_bytes": increment,
        "saved_activation_bytes": saved.total,
    }
    if absolute is not None:
        result["cuda_max_memory_allocated_bytes"] = absolute
    return result


def adaption_prompt_params(base: torch.nn.Module, excitor: ExcitorConfig, ids: torch.Tensor) -> dict[str, Any]:
    """Trainable parameters of peft's AdaptionPrompt (LLaMA-Adapter) with adapter_len=K, adapter_layers=L.

    Also runs one short forward, because an incompatibility with this transformers may only show there.
    """
    try:
        from peft import AdaptionPromptConfig, get_peft_model

        config = AdaptionPromptConfig(
            adapter_len=excitor.num_prompts, adapter_layers=excitor.num_layers, task_type="CAUSAL_LM"
        )
        model = get_peft_model(share_frozen_copy(base), config)
        count = count_parameters(model)
    except Exception as error:  # noqa: BLE001 - recorded, not raised: peft may not support this transformers
        return {"works": False, "stage": "get_peft_model", "error": f"{type(error).__name__}: {error}"}
    result: dict[str, Any] = {
        "trainable": count.trainable,
        "config": {"adapter_len": excitor.num_prompts, "adapter_layers": excitor.num_layers},
    }
    try:
        with torch.no_grad():
            model(input_ids=ids[:1, :8], use_cache=False)
        result["works"] = True
    except Exception as error:  # noqa: BLE001
        result.update(works=False, stage="forward", error=f"{type(error).__name__}: {error}")
    return result


def full_llama7b_params() -> dict[str, Any]:
    """Trainable parameters at the real LLaMA-7B size (32 layers, vocab 32000), built on the meta device.

    Excitor: the paper's setting (top 30 layers, K=30, r=16); LoRA as benchmarked; AdaptionPrompt in
    LLaMA-Adapter's published setting (adapter_len=10, adapter_layers=30). Nothing is allocated or timed.
    """
    from peft import AdaptionPromptConfig, LoraConfig, get_peft_model

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    with torch.device("meta"):
        base = LlamaForCausalLM(config)
    result: dict[str, Any] = {
        "base_total": count_parameters(base).total,
        "excitor": count_parameters(apply_excitor(share_frozen_copy(base), ExcitorConfig())).trainable,
        "excitor_config": ExcitorConfig().to_dict(),
        "lora": count_parameters(get_peft_model(share_frozen_copy(base), LoraConfig(**LORA))).trainable,
    }
    try:
        adaption = AdaptionPromptConfig(adapter_len=10, adapter_layers=30, task_type="CAUSAL_LM")
        result["adaption_prompt"] = count_parameters(get_peft_model(share_frozen_copy(base), adaption)).trainable
        result["adaption_prompt_config"] = {"adapter_len": 10, "adapter_layers": 30}
    except Exception as error:  # noqa: BLE001
        result["adaption_prompt"] = None
        result["adaption_prompt_error"] = f"{type(error).__name__}: {error}"
    return result


# ---------------------------------------------------------------------------------------------- benchmark


def targets_met(forward_stats, train_stats, memory_ratio) -> dict[str, Any]:
    """Each target judged on wall-clock medians and, on CPU, on process-CPU-time medians too."""
    result: dict[str, Any] = {}
    for key in ("median_s", "cpu_median_s"):
        forward_ratio = ratio(forward_stats["excitor"], forward_stats["base"], key)
        step_ratio = ratio(train_stats["excitor"], train_stats["lora"], key)
        if forward_ratio is None:
            continue
        suffix = "" if key == "median_s" else "_cpu_time"
        result["forward_overhead_le_5pct" + suffix] = forward_ratio - 1.0 <= TARGETS["forward_overhead_max"]
        result["step_time_le_lora" + suffix] = step_ratio <= TARGETS["step_time_ratio_max"]
    result["peak_memory_le_lora"] = None if memory_ratio is None else memory_ratio <= TARGETS["peak_memory_ratio_max"]
    return result


def bench_shape(name: str, spec: dict[str, Any], args: argparse.Namespace, device: torch.device, dtype) -> dict:
    from peft import LoraConfig, get_peft_model

    log = (lambda *a: print(f"[{name}]", *a, flush=True)) if not args.quiet else (lambda *a: None)
    build_start = time.perf_counter()
    torch.manual_seed(args.seed)
    model_config = LlamaConfig(**spec["model"])
    with torch.device(device):
        base = LlamaForCausalLM._from_config(model_config, attn_implementation="sdpa", dtype=dtype)
    base.requires_grad_(False).eval()

    visual_mode = "concat" if args.visual_tokens else None
    excitor_config = ExcitorConfig(**spec["excitor"], visual_prompt_mode=visual_mode)
    excitor = apply_excitor(share_frozen_copy(base), excitor_config)
    with torch.no_grad():
        for block in excitor_blocks(excitor):
            block.gate.fill_(GATE_VALUE)  # the block always runs; a non-zero gate makes that explicit
    lora = get_peft_model(share_frozen_copy(base), LoraConfig(**LORA))

    batch, seq = spec["batch"], spec["seq"]
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model_config.vocab_size, (batch, seq), generator=generator).to(device)
    log(f"built in {time.perf_counter() - build_start:.1f}s; batch {batch} x {seq} tokens")

    if args.visual_tokens:
        # Stand-ins for the projected CLIP tokens of each sample; they need a gradient, as the projection's
        # output does, so the prompts' backward runs in full. LoRA sees no images (it has no way to).
        visual = torch.randn(batch, args.visual_tokens, model_config.hidden_size, generator=generator)
        visual = visual.to(device).requires_grad_(True)
        log(f"Excitor gets {args.visual_tokens} visual tokens per sample (concat): {spec['excitor']['num_prompts']} "
            f"+ {args.visual_tokens} prompts per layer")

    # ---- inference forward: base vs Excitor
    for model in (base, excitor):
        model.eval()

    def images_for(model, tokens):
        """The Excitor's visual prompts for the calls inside (new images: their prompt keys are not memoised)."""
        return visual_prompts(model, tokens) if args.visual_tokens and model is excitor else contextlib.nullcontext()

    def forward(model):
        def run():
            with images_for(model, visual.detach().clone() if args.visual_tokens else None), torch.no_grad():
                model(input_ids=ids, use_cache=False)
        return run

    wall, cpu = interleaved({"base": forward(base), "excitor": forward(excitor)}, args.warmup, args.repeats, device)
    forward_stats = {key: summary(wall[key], cpu and cpu[key]) for key in wall}
    forward_ratio = ratio(forward_stats["excitor"], forward_stats["base"])
    log(f"forward median base {forward_stats['base']['median_s']:.3f}s excitor {forward_stats['excitor']['median_s']:.3f}s")

    # ---- training step: Excitor vs LoRA
    optimizers = {}
    steps = {}
    for key, model in (("excitor", excitor), ("lora", lora)):
        model.train()
        optimizer = torch.optim.AdamW(trainable(model), lr=1e-4)
        optimizers[key] = optimizer

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            if args.visual_tokens:
                visual.grad = None
            with images_for(model, visual if args.visual_tokens else None):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            optimizer.step()
        steps[key] = step

    # at least one warm-up step: it creates the AdamW state, which must not be timed or be missing from memory
    wall, cpu = interleaved(steps, max(args.warmup, 1), args.repeats, device)
    train_stats = {key: summary(wall[key], cpu and cpu[key]) for key in wall}
    step_ratio = ratio(train_stats["excitor"], train_stats["lora"])
    log(f"train step median excitor {train_stats['excitor']['median_s']:.3f}s lora {train_stats['lora']['median_s']:.3f}s")

    memory = {}
    if not args.no_memory:
        for key, model in (("excitor", excitor), ("lora", lora)):
            memory[key] = measure_step_memory(model, steps[key], optimizers[key], device)
        memory_ratio = memory["excitor"]["peak_step_bytes"] / memory["lora"]["peak_step_bytes"]
        increment_ratio = memory["excitor"]["peak_increment_bytes"] / memory["lora"]["peak_increment_bytes"]
    else:
        memory_ratio = increment_ratio = None

    params = {
        "base_total": count_parameters(base).total,
        "excitor": count_parameters(excitor).trainable,
        "lora": count_parameters(lora).trainable,
        "adaption_prompt": adaption_prompt_params(base, excitor_config, ids) if not args.no_adaption_prompt else None,
    }
    result = {
        "note": spec["note"],
        "model_config": spec["model"],
        "excitor_config": excitor_config.to_dict(),
        "excitor_gate_value": GATE_VALUE,
        "lora_config": LORA,
        "batch": batch,
        "seq_len": seq,
        "visual_tokens_per_sample": args.visual_tokens,
        "attn_implementation": "sdpa",
        "forward": {
            "what": "model(input_ids, use_cache=False) under torch.no_grad() in eval mode, logits for all tokens",
            **forward_stats,
            "ratio_excitor_over_base": forward_ratio,
            "cpu_time_ratio_excitor_over_base": ratio(forward_stats["excitor"], forward_stats["base"], "cpu_median_s"),
            "overhead": forward_ratio - 1.0,
        },
        "train_step": {
            "what": "zero_grad(set_to_none) + forward with LM loss (labels=input_ids) + backward + AdamW step",
            **train_stats,
            "ratio_excitor_over_lora": step_ratio,
            "cpu_time_ratio_excitor_over_lora": ratio(train_stats["excitor"], train_stats["lora"], "cpu_median_s"),
        },
        "memory": {
            "definition": MEMORY_DEFINITION,
            **memory,
            "ratio_excitor_over_lora": memory_ratio,
            "increment_ratio_excitor_over_lora": increment_ratio,
        },
        "trainable_params": params,
        "targets_met": targets_met(forward_stats, train_stats, memory_ratio),
        "wall_s": time.perf_counter() - build_start,
    }
    del base, excitor, lora, optimizers, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def environment(args: argparse.Namespace, device: torch.device, dtype) -> dict[str, Any]:
    env = {
        **runtime_environment(device),
        "dtype_frozen_model": str(dtype).replace("torch.", ""),
        "dtype_adapters": "float32",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "timing": "interleaved round-robin after warm-up, medians reported; on CPU also the process CPU time "
        "(time.process_time), which other processes on a shared machine disturb far less than the wall time",
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "seed": args.seed,
        "command": args.command,
    }
    try:
        import peft

        env["peft"] = peft.__version__
    except ImportError:  # pragma: no cover
        env["peft"] = None
    return env


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the medians and ratios (pasted as is into bench/README.md)."""

    def mib(b):
        return f"{b / 2**20:,.1f} MiB"

    def rat(value, cpu_value=None):
        text = f"**{value:.3f}**"
        return text + (f" (cpu {cpu_value:.3f})" if cpu_value is not None else "")

    rows = [("shape (batch x tokens)", "metric", "reference", "Excitor", "Excitor / reference"),
            ("---", "---", "---", "---", "---")]
    notes = []
    for name, r in results["shapes"].items():
        f, t, m, p = r["forward"], r["train_step"], r["memory"], r["trainable_params"]
        shape = f"{name} ({r['batch']}x{r['seq_len']})"
        if r.get("visual_tokens_per_sample"):
            shape += f" + {r['visual_tokens_per_sample']} visual tokens"
        rows.append((shape, "inference forward", f"base {format_seconds(f['base'])}", format_seconds(f["excitor"]),
                     rat(f["ratio_excitor_over_base"], f.get("cpu_time_ratio_excitor_over_base"))))
        rows.append((shape, "train step", f"LoRA {format_seconds(t['lora'])}", format_seconds(t["excitor"]),
                     rat(t["ratio_excitor_over_lora"], t.get("cpu_time_ratio_excitor_over_lora"))))
        if m.get("excitor"):
            e, l = m["excitor"], m["lora"]
            rows.append((shape, "train step peak memory", f"LoRA {mib(l['peak_step_bytes'])}",
                         mib(e["peak_step_bytes"]), rat(m["ratio_excitor_over_lora"])))
            rows.append((shape, "- of which step increment", f"LoRA {mib(l['peak_increment_bytes'])}",
                         mib(e["peak_increment_bytes"]), f"{m['increment_ratio_excitor_over_lora']:.3f}"))
            rows.append((shape, "- saved activations", f"LoRA {mib(l['saved_activation_bytes'])}",
                         mib(e["saved_activation_bytes"]),
                         f"{e['saved_activation_bytes'] / max(l['saved_activation_bytes'], 1):.3f}"))
        rows.append((shape, "trainable params", f"LoRA {p['lora']:,}", f"{p['excitor']:,}",
                     f"{p['excitor'] / p['lora']:.3f}"))
        ap = p["adaption_prompt"]
        if ap is not None:
            if ap.get("works"):
                rows.append((shape, "trainable params", f"AdaptionPrompt {ap['trainable']:,}", f"{p['excitor']:,}",
                             f"{p['excitor'] / ap['trainable']:.3f}"))
            else:
                notes.append(f"{name}: peft AdaptionPrompt failed at {ap['stage']}: {ap['error'][:300]}")
        met = r["targets_met"]

        def verdict(key):
            text = "yes" if met[key] else ("n/a" if met[key] is None else "NO")
            if key + "_cpu_time" in met:
                text = f"wall {text}, cpu time {'yes' if met[key + '_cpu_time'] else 'NO'}"
            return text

        notes.append(
            f"{name} targets: forward overhead <= 5%: {verdict('forward_overhead_le_5pct')}; step time <= LoRA: "
            f"{verdict('step_time_le_lora')}; peak memory <= LoRA: {verdict('peak_memory_le_lora')}"
        )
    full = results.get("trainable_params_full_llama7b")
    if full:
        shape = "LLaMA-7B, 32 layers (meta device, counts only)"
        rows.append((shape, "trainable params", f"LoRA {full['lora']:,}", f"{full['excitor']:,}",
                     f"{full['excitor'] / full['lora']:.3f}"))
        if full.get("adaption_prompt"):
            rows.append((shape, "trainable params", f"AdaptionPrompt (len 10, 30 layers) {full['adaption_prompt']:,}",
                         f"{full['excitor']:,}", f"{full['excitor'] / full['adaption_prompt']:.3f}"))
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    env = results["environment"]
    lines.append("")
    lines.append(
        f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, {env['device']} "
        f"({env['device_name']}, {env['cpu_count']} cores), torch threads {env['torch_threads']}, frozen model "
        f"{env['dtype_frozen_model']}, adapters float32, {env['warmup']} warm-up + {env['repeats']} interleaved "
        "repeats, medians (cpu = process CPU time)."
    )
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shapes", default="smollm2-135m,llama7b-layers",
                        help="comma-separated: smollm2-135m, llama7b-layers, tiny")
    parser.add_argument("--smollm2-batch", type=int, default=2)
    parser.add_argument("--smollm2-seq", type=int, default=128)
    parser.add_argument("--llama7b-batch", type=int, default=1)
    parser.add_argument("--llama7b-seq", type=int, default=128)
    parser.add_argument("--llama7b-layers", type=int, default=2)
    parser.add_argument("--llama7b-vocab", type=int, default=1024,
                        help="vocabulary of the LLaMA-7B-shaped model (32000 is the real one)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (1: steadiest on a shared CPU)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="frozen model dtype (default: bfloat16 on CUDA, float32 on CPU); adapters stay float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--no-adaption-prompt", action="store_true", help="skip peft AdaptionPrompt")
    parser.add_argument("--visual-tokens", type=int, default=0,
                        help="visual tokens per sample given to the Excitor as concat prompts (0: language-only); "
                             "LoRA gets no images")
    parser.add_argument("--no-full-count", action="store_true",
                        help="skip the trainable-parameter count at full LLaMA-7B size (meta device)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = setup_device(args.threads, args.device)
    if args.dtype is not None:
        dtype = getattr(torch, args.dtype)
    else:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.visual_tokens < 0:
        raise SystemExit("--visual-tokens must be 0 (language-only) or more")
    all_shapes = shapes(args)
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    unknown = [n for n in names if n not in all_shapes]
    if unknown:
        raise SystemExit(f"unknown shapes {unknown}; choose from {sorted(all_shapes)}")
    if args.command is None:
        args.command = " ".join(["python", "bench/excitor_overhead.py", *(sys.argv[1:] if argv is None else argv)])

    start = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(args, device, dtype), "targets": TARGETS, "shapes": {}}
    for name in names:
        results["shapes"][name] = bench_shape(name, all_shapes[name], args, device, dtype)
    if not args.no_full_count:
        results["trainable_params_full_llama7b"] = full_llama7b_params()
    results["environment"]["wall_s"] = time.perf_counter() - start

    results["table"] = format_table(results)
    write_results(results, args.out, args.quiet)
    return results


if __name__ == "__main__":
    main()
