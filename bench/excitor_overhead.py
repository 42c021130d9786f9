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

`--associations auto,prompt,token` times one Excitor per association of W_k (mm_excitor/methods/excitor/fast_path.py) side by side;
`auto` is what training uses; `reference` is the block's reference forward, and `separate_kv`, `direct`,
`separate_kv+direct` the faithful variants (mm_excitor/methods/excitor/layer.py), which run the reference. `--visual-tokens N` gives the Excitor N visual prompts per sample (LoRA has no way to
take images: see `LORA_IMAGES`).

Timed runs are interleaved (A, B, A, B, ...) after warm-up and reported as medians, so that machine noise hits
all sides alike. The models share the frozen weight tensors (they are never modified), so only one copy of the
base weights is resident. CPU runs fp32; CUDA runs the frozen model in bf16 under bf16 autocast (adapter weights
stay fp32) with PyTorch's fused SDPA kernels, and also reports torch.cuda.max_memory_allocated and the model FLOPs
utilisation of the frozen LM (`bench.timing.decoder_flops`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from bench.timing import (  # noqa: E402
    add_output_arguments, argument_parser, autocast, command_line, decoder_flops, format_seconds, gpu_accounting,
    interleaved, model_flops_utilization, report, runtime_environment, setup_device, share_frozen_copy, summary,
    synchronize,
)
from mm_excitor import (  # noqa: E402
    ExcitorConfig, VisualPrompts, apply_excitor, count_parameters, excitor_blocks,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "excitor_overhead.json"
GATE_VALUE = 0.1
LORA = dict(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
TARGETS = {"forward_overhead_max": 0.05, "step_time_ratio_max": 1.0, "peak_memory_ratio_max": 1.0}
# With visual prompts the Excitor does work LoRA cannot do at all (it sees images); the step may cost 10% more.
VISUAL_TARGETS = {"forward_overhead_max": 0.05, "step_time_ratio_max": 1.10, "peak_memory_ratio_max": 1.0}
BLOCKS = {
    "auto": {}, "prompt": {"key_association": "prompt"}, "token": {"key_association": "token"},
    "reference": {"key_association": "reference"}, "separate_kv": {"visual_projection": "separate_kv"},
    "direct": {"extra_key": "direct"}, "separate_kv+direct": {"visual_projection": "separate_kv", "extra_key": "direct"},
}
"""The Excitor blocks `--associations` can time: ExcitorConfig fields of each."""
ASSOCIATIONS = tuple(BLOCKS)
LORA_IMAGES = (
    "none: LoRA on q/v has no input for images, so it trains on the text alone. A multimodal LoRA baseline would "
    "have to prepend the visual tokens to every sequence (LLaVA-style), multiplying its tokens by (M + N_v) / M; "
    "the comparison is therefore the Excitor with images against LoRA without them, a lower bound for any "
    "LoRA-based multimodal model. The Excitor's numbers include the gradient of the visual tokens (B x N_v x C, "
    "as the projection's output needs), which LoRA has no counterpart of."
)

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


def targets_met(forward_ratios: dict[str, float | None], step_ratios: dict[str, float | None],
                memory_ratio: float | None, targets: dict[str, float]) -> dict[str, Any]:
    """Each target judged on wall-clock medians and, on CPU, on process-CPU-time medians too."""
    result: dict[str, Any] = {}
    for key, suffix in (("median_s", ""), ("cpu_median_s", "_cpu_time")):
        if forward_ratios.get(key) is None:
            continue
        result["forward_overhead_le_target" + suffix] = forward_ratios[key] - 1.0 <= targets["forward_overhead_max"]
        result["step_time_le_target" + suffix] = step_ratios[key] <= targets["step_time_ratio_max"]
    result["peak_memory_le_lora"] = None if memory_ratio is None else memory_ratio <= targets["peak_memory_ratio_max"]
    return result


def variant_name(association: str) -> str:
    if association == "auto":
        return "excitor"
    return f"excitor_{association}_side" if association in ("prompt", "token") else f"excitor_{association}"


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
    excitor_configs = {
        variant_name(a): ExcitorConfig(**spec["excitor"], visual_prompt_mode=visual_mode, **BLOCKS[a])
        for a in args.associations
    }
    excitors = {}
    for variant, config in excitor_configs.items():
        torch.manual_seed(args.seed)  # every variant gets the same adapter weights
        excitors[variant] = apply_excitor(share_frozen_copy(base), config)
        with torch.no_grad():
            for block in excitor_blocks(excitors[variant]):
                block.gate.fill_(GATE_VALUE)  # the block always runs; a non-zero gate makes that explicit
    lora = get_peft_model(share_frozen_copy(base), LoraConfig(**LORA))

    batch, seq = spec["batch"], spec["seq"]
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model_config.vocab_size, (batch, seq), generator=generator).to(device)
    log(f"built in {time.perf_counter() - build_start:.1f}s; batch {batch} x {seq} tokens")

    visual: dict[str, list[torch.Tensor]] = {}
    if args.visual_tokens:
        # Stand-ins for the projected CLIP tokens of each sample (two sets where keys and values are projected
        # separately); they need a gradient, as the projections' outputs do, so the prompts' backward runs in full.
        for variant, model in excitors.items():
            block = excitor_blocks(model)[0]
            shape = (batch, args.visual_tokens, block.prompt_width)
            sets = 2 if excitor_configs[variant].visual_projection == "separate_kv" else 1
            visual[variant] = [torch.randn(shape, generator=generator).to(device).requires_grad_(True)
                               for _ in range(sets)]
        log(f"Excitor gets {args.visual_tokens} visual tokens per sample (concat): {spec['excitor']['num_prompts']} "
            f"+ {args.visual_tokens} prompts per layer; LoRA gets none")

    def images_for(variant: str, fresh: bool = False) -> dict[str, Any]:
        """The Excitor's `visual_prompts` argument (LoRA and the base get none); `fresh`: new tensors, whose prompt
        keys are not memoised."""
        if variant not in visual:
            return {}
        tokens = [t.detach().clone() for t in visual[variant]] if fresh else visual[variant]
        has_image = torch.ones(batch, dtype=torch.bool, device=device)
        return {"visual_prompts": VisualPrompts(tokens[0], has_image, tokens[1] if len(tokens) > 1 else None)}

    # Which association each variant's training calls use (the same in every adapted layer: same shapes).
    probe = torch.empty(batch, seq, model_config.hidden_size, device=device)
    associations = {}
    for variant, model in excitors.items():
        fast = excitor_blocks(model)[0].fast
        prompts = images_for(variant).get("visual_prompts")
        associations[variant] = "reference" if fast is None else fast.training_association(probe, prompts)
    del probe
    log("training associations: " + ", ".join(f"{k} -> {v}" for k, v in associations.items()))

    # ---- inference forward: base vs Excitor(s)
    for model in (base, *excitors.values()):
        model.eval()

    def forward(model, variant=""):
        def run():
            with torch.no_grad(), autocast(device, dtype):
                model(input_ids=ids, use_cache=False, **images_for(variant, fresh=True))
        return run

    wall, cpu = interleaved({"base": forward(base), **{k: forward(m, k) for k, m in excitors.items()}},
                            args.warmup, args.repeats, device)
    forward_stats = {key: summary(wall[key], cpu and cpu[key]) for key in wall}
    log("forward medians " + ", ".join(f"{k} {v['median_s']:.3f}s" for k, v in forward_stats.items()))

    # ---- training step: Excitor(s) vs LoRA
    optimizers = {}
    steps = {}
    for key, model in (*excitors.items(), ("lora", lora)):
        model.train()
        optimizer = torch.optim.AdamW(trainable(model), lr=1e-4)
        optimizers[key] = optimizer

        def step(model=model, optimizer=optimizer, key=key):
            optimizer.zero_grad(set_to_none=True)
            for tokens in visual.get(key, ()):
                tokens.grad = None
            with autocast(device, dtype):
                loss = model(input_ids=ids, labels=ids, use_cache=False, **images_for(key)).loss
            loss.backward()
            optimizer.step()
        steps[key] = step

    # at least one warm-up step: it creates the AdamW state, which must not be timed or be missing from memory
    wall, cpu = interleaved(steps, max(args.warmup, 1), args.repeats, device)
    train_stats = {key: summary(wall[key], cpu and cpu[key]) for key in wall}
    log("train step medians " + ", ".join(f"{k} {v['median_s']:.3f}s" for k, v in train_stats.items()))

    memory = {}
    if not args.no_memory:
        for key, model in (*excitors.items(), ("lora", lora)):
            memory[key] = measure_step_memory(model, steps[key], optimizers[key], device)
    visual_grad_bytes = {key: sum(t.numel() * t.element_size() for t in tokens) for key, tokens in visual.items()}

    gpu = gpu_accounting(device, args.peak_tflops)
    flops = {"forward": decoder_flops(model_config, batch, seq, backward=False),
             "train_step": decoder_flops(model_config, batch, seq, backward=True)}
    if gpu["measured"]:
        peak = gpu["peak_bf16_tflops"]
        gpu["mfu_frozen_lm"] = {
            "forward": {k: model_flops_utilization(flops["forward"], v["median_s"], peak)
                        for k, v in forward_stats.items()},
            "train_step": {k: model_flops_utilization(flops["train_step"], v["median_s"], peak)
                           for k, v in train_stats.items()},
        }

    targets = VISUAL_TARGETS if visual else TARGETS
    variants = {}
    for key in excitors:
        forward_ratios = {t: ratio(forward_stats[key], forward_stats["base"], t) for t in ("median_s", "cpu_median_s")}
        step_ratios = {t: ratio(train_stats[key], train_stats["lora"], t) for t in ("median_s", "cpu_median_s")}
        entry: dict[str, Any] = {
            "block": {name: getattr(excitor_configs[key], name)
                      for name in ("key_association", "visual_projection", "extra_key")},
            "key_association": excitor_configs[key].key_association,
            "training_association": associations[key],
            "forward_ratio_over_base": forward_ratios["median_s"],
            "forward_cpu_time_ratio_over_base": forward_ratios["cpu_median_s"],
            "step_ratio_over_lora": step_ratios["median_s"],
            "step_cpu_time_ratio_over_lora": step_ratios["cpu_median_s"],
        }
        memory_ratio = None
        if memory:
            excitor_peak, lora_peak = memory[key]["peak_step_bytes"], memory["lora"]["peak_step_bytes"]
            memory_ratio = excitor_peak / lora_peak
            entry.update(
                memory_ratio_over_lora=memory_ratio,
                increment_ratio_over_lora=memory[key]["peak_increment_bytes"] / memory["lora"]["peak_increment_bytes"],
                memory_ratio_without_visual_grad=(excitor_peak - visual_grad_bytes.get(key, 0)) / lora_peak,
            )
        entry["targets_met"] = targets_met(forward_ratios, step_ratios, memory_ratio, targets)
        variants[key] = entry

    params = {
        "base_total": count_parameters(base).total,
        "excitor": count_parameters(next(iter(excitors.values()))).trainable,
        "lora": count_parameters(lora).trainable,
        "adaption_prompt": (adaption_prompt_params(base, next(iter(excitor_configs.values())), ids)
                            if not args.no_adaption_prompt else None),
    }
    result = {
        "note": spec["note"],
        "model_config": spec["model"],
        "excitor_configs": {k: c.to_dict() for k, c in excitor_configs.items()},
        "excitor_gate_value": GATE_VALUE,
        "lora_config": LORA,
        "lora_images": LORA_IMAGES if visual else None,
        "batch": batch,
        "seq_len": seq,
        "visual_tokens_per_sample": args.visual_tokens,
        "visual_token_grad_bytes": visual_grad_bytes,
        "attn_implementation": "sdpa",
        "targets": targets,
        "forward": {
            "what": "model(input_ids, use_cache=False) under torch.no_grad() in eval mode, logits for all tokens",
            **forward_stats,
        },
        "train_step": {
            "what": "zero_grad(set_to_none) + forward with LM loss (labels=input_ids) + backward + AdamW step",
            **train_stats,
        },
        "memory": {"definition": MEMORY_DEFINITION, **memory},
        "variants": variants,
        "frozen_lm_flops": flops,
        "gpu": gpu,
        "trainable_params": params,
        "wall_s": time.perf_counter() - build_start,
    }
    del base, excitors, lora, optimizers, steps
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
        for key, v in r["variants"].items():
            label = f", {v['key_association']}" + (f" -> {v['training_association']} side" if v["key_association"]
                                                   == "auto" else " side")
            if v["training_association"] == "reference":
                block = v.get("block", {})
                label = f", reference ({block.get('visual_projection')}, {block.get('extra_key')})"
            rows.append((shape, f"inference forward{label}", f"base {format_seconds(f['base'])}",
                         format_seconds(f[key]), rat(v["forward_ratio_over_base"], v["forward_cpu_time_ratio_over_base"])))
            rows.append((shape, f"train step{label}", f"LoRA {format_seconds(t['lora'])}", format_seconds(t[key]),
                         rat(v["step_ratio_over_lora"], v["step_cpu_time_ratio_over_lora"])))
            if m.get(key):
                e, l = m[key], m["lora"]
                rows.append((shape, f"train step peak memory{label}", f"LoRA {mib(l['peak_step_bytes'])}",
                             mib(e["peak_step_bytes"]), rat(v["memory_ratio_over_lora"])))
                rows.append((shape, "- of which step increment", f"LoRA {mib(l['peak_increment_bytes'])}",
                             mib(e["peak_increment_bytes"]), f"{v['increment_ratio_over_lora']:.3f}"))
                rows.append((shape, "- saved activations", f"LoRA {mib(l['saved_activation_bytes'])}",
                             mib(e["saved_activation_bytes"]),
                             f"{e['saved_activation_bytes'] / max(l['saved_activation_bytes'], 1):.3f}"))
                if r["visual_token_grad_bytes"]:
                    rows.append((shape, "- peak without the visual tokens' gradient", f"LoRA {mib(l['peak_step_bytes'])}",
                                 mib(e["peak_step_bytes"] - r["visual_token_grad_bytes"][key]),
                                 f"{v['memory_ratio_without_visual_grad']:.3f}"))
            met = v["targets_met"]

            def verdict(key):
                text = "yes" if met[key] else ("n/a" if met[key] is None else "NO")
                if key + "_cpu_time" in met:
                    text = f"wall {text}, cpu time {'yes' if met[key + '_cpu_time'] else 'NO'}"
                return text

            targets = r["targets"]
            notes.append(
                f"{name} {key} targets: forward overhead <= {targets['forward_overhead_max']:.0%}: "
                f"{verdict('forward_overhead_le_target')}; step time <= {targets['step_time_ratio_max']:.2f}x LoRA: "
                f"{verdict('step_time_le_target')}; peak memory <= LoRA: {verdict('peak_memory_le_lora')}"
            )
        rows.append((shape, "trainable params", f"LoRA {p['lora']:,}", f"{p['excitor']:,}",
                     f"{p['excitor'] / p['lora']:.3f}"))
        ap = p["adaption_prompt"]
        if ap is not None:
            if ap.get("works"):
                rows.append((shape, "trainable params", f"AdaptionPrompt {ap['trainable']:,}", f"{p['excitor']:,}",
                             f"{p['excitor'] / ap['trainable']:.3f}"))
            else:
                notes.append(f"{name}: peft AdaptionPrompt failed at {ap['stage']}: {ap['error'][:300]}")
        if r.get("lora_images"):
            notes.append(f"{name}: LoRA images: {r['lora_images']}")
        gpu = r["gpu"]
        if gpu["measured"]:
            mfu = gpu["mfu_frozen_lm"]
            notes.append(f"{name}: MFU of the frozen LM ({gpu['device_name']}, peak {gpu['peak_bf16_tflops']} TFLOP/s): "
                         + "; ".join(f"{what} " + ", ".join(f"{k} {v:.1%}" for k, v in values.items() if v is not None)
                                     for what, values in mfu.items()))
        else:
            notes.append(f"{name}: {gpu['note']}")
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
        f"repeats, medians (cpu = process CPU time); load average at start {env['load_average_at_start']}."
    )
    lines.append(f"Command: `{env['command']}`")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
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
    parser.add_argument("--associations", default="auto",
                        help=f"comma-separated associations of W_k to time side by side, from {ASSOCIATIONS}")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak for the MFU (default: from bench.timing.PEAK_BF16_TFLOPS)")
    parser.add_argument("--no-full-count", action="store_true",
                        help="skip the trainable-parameter count at full LLaMA-7B size (meta device)")
    add_output_arguments(parser, DEFAULT_OUT)
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
    args.associations = [a.strip() for a in args.associations.split(",") if a.strip()]
    if not args.associations or any(a not in ASSOCIATIONS for a in args.associations):
        raise SystemExit(f"--associations takes a comma-separated subset of {ASSOCIATIONS}")
    all_shapes = shapes(args)
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    unknown = [n for n in names if n not in all_shapes]
    if unknown:
        raise SystemExit(f"unknown shapes {unknown}; choose from {sorted(all_shapes)}")
    if args.command is None:
        args.command = command_line("bench/excitor_overhead.py", argv)

    start = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(args, device, dtype), "shapes": {}}
    for name in names:
        results["shapes"][name] = bench_shape(name, all_shapes[name], args, device, dtype)
    if not args.no_full_count:
        results["trainable_params_full_llama7b"] = full_llama7b_params()
    return report(results, format_table, args.out, args.quiet, time.perf_counter() - start)


if __name__ == "__main__":
    main()
