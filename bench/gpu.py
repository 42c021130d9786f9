"""The LLaMA-7B-shape costs of every method on one GPU, side by side in one process, and a short real-shape run of
the caption recipe; `--tiny` runs the very same code on the CPU on tiny shapes (the test suite does).

    bash bench/gpu.sh --out DIR                        # every stage, each under its own time guard
    python bench/gpu.py bench --out DIR/bench.json     # the side-by-side costs
    python bench/gpu.py e2e --out DIR/e2e.json         # train_caption.py (~30 steps) + caption generation
    python bench/gpu.py bench --tiny --out /tmp/b.json # the same on tiny shapes, on the CPU

`bench`: a random-init LLaMA-7B (32 layers, hidden 4096, vocabulary 32000; bf16, SDPA, built directly on the GPU)
and a random-init open_clip ViT-L/14 (257 tokens of width 1024, fp32). Each method of `configs/coco_llama7b.yaml`'s
model section (the Excitor, LoRA with its visual prefix, the LLaVA-style prefix baseline, LLaMA-Adapter) is built on
the one resident copy of the frozen base (`share_frozen_copy`); trainable tensors are fp32, steps run under bf16
autocast. Measured, interleaved round-robin after warm-up, CUDA-synchronised, medians:
- training step (zero_grad + forward with LM loss + backward + AdamW step) at the COCO recipe's micro-batch, 16
  captions x 64 tokens with the ViT-L tokens of 16 images (computed once by the encoder; the encoder's own forward
  is timed apart, it is the same for every method), and language-only at 1 x 512;
- torch.cuda.max_memory_allocated of one such step per method;
- the frozen LM's MFU: `bench.timing.decoder_flops` (forward + activation-gradient backward of the frozen decoder)
  over the median step time and the device's dense bf16 peak (`bench.timing.PEAK_BF16_TFLOPS`, 989.4 TFLOP/s for
  H100/H200 SXM). `text` counts the caption tokens only, `processed` the tokens the LM really runs (64 + 257 per
  row for the prefix methods, whose images enter as a sequence prefix);
- forward only (no_grad, eval) with images against the bare LM on the same text;
- greedy generation tokens/s with and without visual tokens against the bare LM's `generate`.
`e2e`: writes a config-only LM directory (LLaMA-7B config.json + a word-level tokenizer of the shapes captions), a
small shapes set, then runs `train_caption.py --config configs/gpu_llama7b_shapes.yaml` (model.random_init_seed:
the LM is built from config.json with random weights, on the GPU) and `python -m tasks.generate caption` on its
test split; the captions come back for scoring where pycocoevalcap and Java are (bench/README.md gives the command).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from bench.multimodal_speed import GATE_VALUE, PROMPTS, word_tokenizer  # noqa: E402
from bench.timing import (  # noqa: E402
    autocast, decoder_flops, gpu_accounting, interleaved, model_flops_utilization, runtime_environment, setup_device,
    share_frozen_copy, summary, synchronize,
)
from mm_excitor import count_parameters, excitor_blocks  # noqa: E402
from mm_excitor.decoding import Decoding  # noqa: E402
from mm_excitor.factory import method_model  # noqa: E402
from mm_excitor.recipe import load_config  # noqa: E402
from mm_excitor.vision import VisionConfig, VisionEncoder  # noqa: E402

METHODS = ("excitor", "lora", "prefix", "llama_adapter")
TARGETS = {"excitor_step_over_lora_max": 1.0, "excitor_step_over_prefix_max": 0.5,
           "excitor_memory_over_lora_max": 1.0, "excitor_forward_over_bare_max": 1.02,
           "excitor_generation_over_bare_min": 0.95, "mfu_aim": 0.40}
E2E_CONFIG = REPO / "configs" / "gpu_llama7b_shapes.yaml"
CAPTION_PROMPT = "Describe the image in one sentence.\nCaption:"


@dataclasses.dataclass(frozen=True)
class Shape:
    """Everything the two modes differ in; the code path is the same."""

    lm: dict[str, Any]
    vision: dict[str, Any]
    model_overrides: tuple[str, ...]
    batch: int
    seq: int
    text_seq: int
    gen_batch: int
    new_tokens: int
    warmup: int
    repeats: int
    gen_repeats: int
    shapes_images: int
    e2e_overrides: tuple[str, ...]


LLAMA7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0,
               tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
SHAPES = {
    "llama7b": Shape(
        lm=LLAMA7B, vision=dict(model_name="ViT-L-14"), model_overrides=(), batch=16, seq=64, text_seq=512,
        gen_batch=8, new_tokens=32, warmup=2, repeats=5, gen_repeats=3, shapes_images=200, e2e_overrides=(),
    ),
    "tiny": Shape(
        lm=dict(LLAMA7B, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=128, max_position_embeddings=256),
        vision=dict(model_name="Tiny-ViT", model_config_file=str(REPO / "configs" / "open_clip" / "Tiny-ViT.json")),
        model_overrides=("excitor.num_layers=2", "excitor.num_prompts=4", "excitor.rank=4", "lora.r=4",
                         "llama_adapter.adapter_layers=2", "llama_adapter.adapter_len=3"),
        batch=2, seq=8, text_seq=16, gen_batch=2, new_tokens=3, warmup=1, repeats=1, gen_repeats=1,
        shapes_images=24,
        e2e_overrides=("model.vision.model_name=Tiny-ViT", "model.vision.model_config_file=configs/open_clip/Tiny-ViT.json",
                       "model.excitor.num_layers=2", "model.excitor.num_prompts=4", "model.excitor.rank=4",
                       "model.dtype=float32", "train.precision=fp32", "train.device=cpu", "train.batch_size=2",
                       "train.max_steps=2", "train.warmup_steps=1", "train.save_every_steps=2",
                       "train.eval_every_steps=2", "train.eval_max_batches=1", "train.log_every_steps=1",
                       "train.num_workers=0", "decoding.batch_size=4", "decoding.max_new_tokens=3"),
    ),
}


def log(*parts: Any) -> None:
    print("[gpu]", *parts, flush=True)


def write_json(results: dict[str, Any], out: Path) -> None:
    """Written after every part, so that a stage stopped by its time guard still leaves what it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def peak_memory_of(fn: Callable[[], Any], device: torch.device) -> int | None:
    """torch.cuda.max_memory_allocated over one call (everything resident included); None on the CPU."""
    if device.type != "cuda":
        fn()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)


# ------------------------------------------------------------------------------------------------------ bench


def build_models(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int):
    """(bare LM, tokenizer, encoder, {method: model}): every method on the one resident copy of the frozen LM."""
    from tasks.caption import CaptionRunConfig

    torch.manual_seed(seed)
    with torch.device(device):
        bare = LlamaForCausalLM._from_config(LlamaConfig(**shape.lm), attn_implementation="sdpa", dtype=dtype)
    bare.requires_grad_(False).eval()
    tokenizer = word_tokenizer(shape.lm["vocab_size"])
    encoder = VisionEncoder(VisionConfig(**shape.vision, init_seed=seed)).to(device)
    recipe = load_config(CaptionRunConfig, REPO / "configs" / "coco_llama7b.yaml",
                         [f"model.{o}" for o in shape.model_overrides])
    identity = encoder.identity()
    models = {}
    for method in METHODS:
        torch.manual_seed(seed)
        models[method] = method_model(dataclasses.replace(recipe.model, method=method), share_frozen_copy(bare),
                                      tokenizer, vision_identity=identity).to(device)
    with torch.no_grad():
        for block in excitor_blocks(models["excitor"]):
            block.gate.fill_(GATE_VALUE)  # timed as trained: an open gate, as the other benchmarks do
    return bare, tokenizer, encoder, models, recipe.model


def train_steps(models: dict[str, Any], inputs: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype):
    """One step function per method (each with its own AdamW), and the optimisers (to free them afterwards)."""
    optimizers = {m: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
                  for m, model in models.items()}

    def step(method: str) -> Callable[[], None]:
        model, optimizer = models[method], optimizers[method]

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
        return run

    return {m: step(m) for m in models}, optimizers


def measure_training(name: str, models, inputs, lm_config, processed_extra: dict[str, int], shape: Shape,
                     device: torch.device, dtype: torch.dtype, peak: float | None) -> dict[str, Any]:
    batch, seq = inputs["input_ids"].shape
    for model in models.values():
        model.train()
    steps, optimizers = train_steps(models, inputs, device, dtype)
    wall, cpu = interleaved(steps, shape.warmup, shape.repeats, device)
    result: dict[str, Any] = {"batch": batch, "seq_len": seq, "images": "visual_tokens" in inputs}
    text_flops = decoder_flops(lm_config, batch, seq, backward=True)
    for method in models:
        stats = summary(wall[method], cpu and cpu[method], batch * seq)
        processed = decoder_flops(lm_config, batch, seq + processed_extra.get(method, 0), backward=True)
        stats.update(
            max_memory_allocated_bytes=peak_memory_of(steps[method], device),
            frozen_lm_flops_text=text_flops, frozen_lm_flops_processed=processed,
            mfu_text=model_flops_utilization(text_flops, stats["median_s"], peak),
            mfu_processed=model_flops_utilization(processed, stats["median_s"], peak),
        )
        result[method] = stats
    for method in models:
        for reference in ("lora", "prefix") if "prefix" in models else ("lora",):
            result[method][f"step_over_{reference}"] = ratio(result[method]["median_s"], result[reference]["median_s"])
            result[method][f"memory_over_{reference}"] = ratio(result[method]["max_memory_allocated_bytes"],
                                                               result[reference]["max_memory_allocated_bytes"])
    log(f"{name}: " + ", ".join(f"{m} {result[m]['median_s'] * 1e3:.1f} ms" for m in models))
    del steps, optimizers
    for model in models.values():
        model.zero_grad(set_to_none=True)
        model.eval()
    return result


def measure_forward(bare, models, inputs, shape: Shape, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    text = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    visual = {k: inputs[k] for k in ("visual_tokens", "has_image")}

    def call(model, **kwargs) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), autocast(device, dtype):
                model(**kwargs)
        return run

    fns = {"bare_lm": call(bare, **text), **{m: call(models[m], **text, **visual) for m in models}}
    wall, cpu = interleaved(fns, shape.warmup, shape.repeats, device)
    result = {name: summary(wall[name], cpu and cpu[name]) for name in fns}
    for method in models:
        result[method]["over_bare_lm"] = ratio(result[method]["median_s"], result["bare_lm"]["median_s"])
    log("forward: " + ", ".join(f"{k} {v['median_s'] * 1e3:.1f} ms" for k, v in result.items()))
    return result


def measure_generation(bare, tokenizer, models, tokens: torch.Tensor, shape: Shape, device: torch.device,
                       dtype: torch.dtype) -> dict[str, Any]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(shape.gen_batch)]
    encoded = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt").to(device)
    decoding = Decoding(batch_size=shape.gen_batch, max_new_tokens=shape.new_tokens, min_new_tokens=shape.new_tokens)
    lengths: dict[str, int] = {}

    def bare_generate() -> None:
        with torch.no_grad(), autocast(device, dtype):
            out = bare.generate(**encoded, **decoding.generate_kwargs(tokenizer.pad_token_id, tokenizer.eos_token_id))
        lengths["bare_lm"] = out.shape[1] - encoded["input_ids"].shape[1]

    def generate(method: str, **visual) -> Callable[[], None]:
        def run() -> None:
            with autocast(device, dtype):
                models[method].generate(**encoded, **visual, decoding=decoding)
        return run

    fns: dict[str, Callable[[], None]] = {"bare_lm": bare_generate}
    for method in models:
        fns[f"{method}_text"] = generate(method)
        fns[f"{method}_images"] = generate(method, visual_tokens=tokens[: shape.gen_batch])
    wall, cpu = interleaved(fns, 1, shape.gen_repeats, device)
    if lengths["bare_lm"] != shape.new_tokens:
        raise RuntimeError(f"the bare LM generated {lengths['bare_lm']} new tokens, not {shape.new_tokens}")
    result: dict[str, Any] = {"batch": shape.gen_batch, "new_tokens": shape.new_tokens}
    for name in fns:
        result[name] = summary(wall[name], cpu and cpu[name], shape.gen_batch * shape.new_tokens)
        result[name]["throughput_over_bare_lm"] = ratio(result[name]["tokens_per_s"], result["bare_lm"]["tokens_per_s"])
    log("generation tokens/s: " + ", ".join(f"{k} {result[k]['tokens_per_s']:.1f}" for k in fns))
    return result


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    """Each target of the issue judged on the measured ratios (None where a part is missing)."""
    def get(*keys: str) -> Any:
        node: Any = results
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def le(value: float | None, bound: float) -> bool | None:
        return None if value is None else value <= bound

    step = ("train_multimodal", "excitor")
    return {
        "excitor_step_le_lora": le(get(*step, "step_over_lora"), TARGETS["excitor_step_over_lora_max"]),
        "excitor_step_le_half_prefix": le(get(*step, "step_over_prefix"), TARGETS["excitor_step_over_prefix_max"]),
        "excitor_memory_le_lora": le(get(*step, "memory_over_lora"), TARGETS["excitor_memory_over_lora_max"]),
        "excitor_forward_le_bare": le(get("forward", "excitor", "over_bare_lm"),
                                      TARGETS["excitor_forward_over_bare_max"]),
        "excitor_generation_ge_bare": None if get("generation", "excitor_images", "throughput_over_bare_lm") is None
        else get("generation", "excitor_images", "throughput_over_bare_lm") >= TARGETS["excitor_generation_over_bare_min"],
        "excitor_mfu_text_ge_aim": None if get(*step, "mfu_text") is None
        else get(*step, "mfu_text") >= TARGETS["mfu_aim"],
    }


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    shape = SHAPES[args.shape]
    device = setup_device(args.threads, "cpu" if args.tiny else args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    gpu = gpu_accounting(device, args.peak_tflops)
    results: dict[str, Any] = {"environment": {**runtime_environment(device), "shape": args.shape,
                                               "dtype_frozen_lm": str(dtype), "command": args.command},
                               "gpu": gpu, "targets": TARGETS}
    bare, tokenizer, encoder, models, model_config = build_models(shape, device, dtype, args.seed)
    results["models"] = {"lm": shape.lm, "lm_parameters": count_parameters(bare).total,
                         "vision": {**shape.vision, "num_tokens": encoder.num_tokens, "width": encoder.width},
                         "methods": {m: {"trainable": count_parameters(models[m]).trainable,
                                         "adapter_config": models[m].adapter_config()} for m in models},
                         "build_s": time.perf_counter() - start}
    log(f"built the LM, encoder and {len(models)} methods in {results['models']['build_s']:.1f}s")
    write_json(results, args.out)
    peak = gpu.get("peak_bf16_tflops")

    generator = torch.Generator().manual_seed(args.seed)
    images, multimodal = multimodal_inputs(shape, encoder, generator, device)
    encode = lambda: encoder(images)  # noqa: E731
    wall, _ = interleaved({"encoder": encode}, shape.warmup, shape.repeats, device)
    results["encoder_forward"] = {"batch": shape.batch, **summary(wall["encoder"], None)}
    tokens = multimodal["visual_tokens"]
    prefix_tokens = {"lora": encoder.num_tokens, "prefix": encoder.num_tokens}
    parts: dict[str, Callable[[], Any]] = {
        "train_multimodal": lambda: measure_training("train 16x64 + images", models, multimodal, bare.config,
                                                     prefix_tokens, shape, device, dtype, peak),
        # the prefix baseline trains nothing without images (its projector is its only trainable part)
        "train_language_only": lambda: measure_training(
            "train 1x512 text", {m: models[m] for m in METHODS if m != "prefix"},
            language_only_inputs(shape, generator, device), bare.config, {}, shape, device, dtype, peak),
        "forward": lambda: measure_forward(bare, models, multimodal, shape, device, dtype),
        "generation": lambda: measure_generation(bare, tokenizer, models, tokens, shape, device, dtype),
    }
    for part, measure in parts.items():
        part_start = time.perf_counter()
        try:
            results[part] = measure()
        except Exception as error:  # noqa: BLE001 - recorded, then the next part runs: the GPU time is scarce
            results[part] = {"error": f"{type(error).__name__}: {error}"}
            log(f"{part} FAILED: {results[part]['error']}")
            if args.tiny:
                raise
        results[part + "_s"] = time.perf_counter() - part_start
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results["verdicts"] = verdicts(results)
        results["environment"]["wall_s"] = time.perf_counter() - start
        write_json(results, args.out)
    return results


def multimodal_inputs(shape: Shape, encoder: VisionEncoder, generator: torch.Generator, device: torch.device):
    """(images, the training step's inputs): random captions of the micro-batch with the encoder's tokens."""
    images = torch.randn(shape.batch, 3, *encoder.visual.image_size, generator=generator).to(device)
    with torch.no_grad():
        tokens = encoder(images)
    ids = torch.randint(3, shape.lm["vocab_size"], (shape.batch, shape.seq), generator=generator).to(device)
    return images, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids, "visual_tokens": tokens,
                    "has_image": torch.ones(shape.batch, dtype=torch.bool, device=device)}


def run_profile(args: argparse.Namespace) -> dict[str, Any]:
    """Where the Excitor's time goes next to the bare LM: the language-only forward ratio (the multimodal one is in
    `bench`), then torch.profiler tables of the bare and Excitor forwards and the Excitor and LoRA training steps,
    written to ``--profile-table`` (the cause of any missed target is read there)."""
    shape = SHAPES[args.shape]
    device = setup_device(args.threads, "cpu" if args.tiny else args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bare, _, encoder, models, _ = build_models(shape, device, dtype, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    _, multimodal = multimodal_inputs(shape, encoder, generator, device)
    text = {k: multimodal[k] for k in ("input_ids", "attention_mask")}
    visual = {k: multimodal[k] for k in ("visual_tokens", "has_image")}
    excitor = models["excitor"]

    def forward(model, **kwargs) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), autocast(device, dtype):
                model(**kwargs)
        return run

    forwards = {"bare_lm": forward(bare, **text), "excitor_text": forward(excitor, **text),
                "excitor_images": forward(excitor, **text, **visual)}
    wall, cpu = interleaved(forwards, shape.warmup, shape.repeats, device)
    results: dict[str, Any] = {"environment": {**runtime_environment(device), "shape": args.shape,
                                               "command": args.command},
                               "forward": {name: summary(wall[name], cpu and cpu[name]) for name in forwards}}
    for name in ("excitor_text", "excitor_images"):
        results["forward"][name]["over_bare_lm"] = ratio(results["forward"][name]["median_s"],
                                                         results["forward"]["bare_lm"]["median_s"])
    write_json(results, args.out)
    for model in models.values():
        model.train()
    steps, _ = train_steps({m: models[m] for m in ("excitor", "lora")}, multimodal, device, dtype)
    profiled = {**{f"forward {name}": fn for name, fn in forwards.items()},
                **{f"train step {method}": fn for method, fn in steps.items()}}
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tables = []
    for name, fn in profiled.items():
        for _ in range(shape.warmup):
            fn()
        synchronize(device)
        with torch.profiler.profile(activities=activities) as profile:
            for _ in range(shape.repeats):
                fn()
            synchronize(device)
        table = profile.key_averages().table(sort_by=sort, row_limit=25)
        tables.append(f"## {name} ({shape.repeats} calls, sorted by {sort})\n\n{table}\n")
        log(f"profiled {name}")
    args.profile_table.write_text("\n".join(tables))
    results["profile_table"] = args.profile_table.name
    write_json(results, args.out)
    return results


def language_only_inputs(shape: Shape, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, shape.lm["vocab_size"], (1, shape.text_seq), generator=generator).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


# -------------------------------------------------------------------------------------------------------- e2e


def write_config_only_lm(directory: Path, lm: dict[str, Any], annotations: Path) -> None:
    """config.json of the shape and a word-level tokenizer of the shapes captions: no weights file, on purpose (the
    recipe sets model.random_init_seed)."""
    data = json.loads(annotations.read_text())
    texts = [sentence["raw"] for image in data["images"] for sentence in image["sentences"]]
    texts.append(CAPTION_PROMPT.replace(":", " : "))
    LlamaConfig(**lm).save_pretrained(directory)
    word_tokenizer(lm["vocab_size"], texts).save_pretrained(directory)


def run_e2e(args: argparse.Namespace) -> dict[str, Any]:
    import train_caption
    from tasks import generate
    from data.shapes import main as make_shapes

    shape = SHAPES[args.shape]
    work = args.work
    results: dict[str, Any] = {"command": args.command, "config": str(E2E_CONFIG.relative_to(REPO))}
    start = time.perf_counter()
    shapes_dir = work / "shapes"
    make_shapes(["--out", str(shapes_dir), "--num-images", str(shape.shapes_images), "--seed", "0",
                 "--difficulty", "simple", "--sizes", "large", "--captions-per-image", "1", "--val-fraction", "0.1",
                 "--test-fraction", "0.1", "--no-progress", "--overwrite"])
    write_config_only_lm(work / "lm", shape.lm, shapes_dir / "coco" / "dataset_coco.json")
    references = shapes_dir / "coco" / "annotations" / "captions_test2014.json"
    results["test_references_sha256"] = hashlib.sha256(references.read_bytes()).hexdigest()  # to score elsewhere
    results["shapes_command"] = (f"python -m data.shapes --out SHAPES --num-images {shape.shapes_images} --seed 0 "
                                 "--difficulty simple --sizes large --captions-per-image 1 --val-fraction 0.1 "
                                 "--test-fraction 0.1 --no-progress --overwrite")
    results["setup_s"] = time.perf_counter() - start
    write_json(results, args.out)
    run_dir = work / "run"
    overrides = [f"model.language_model={work / 'lm'}", f"data.train_annotations={shapes_dir}/coco/dataset_coco.json",
                 f"data.image_root={shapes_dir}/coco/images", f"train.output_dir={run_dir}", *shape.e2e_overrides]
    train_start = time.perf_counter()
    summary_ = train_caption.main(["--config", str(E2E_CONFIG), *overrides])
    results["train"] = {k: summary_.get(k) for k in ("steps", "wall_time_s", "tokens", "samples", "tokens_per_s",
                                                     "peak_memory_bytes", "peak_memory_kind", "best_val_loss",
                                                     "effective_batch", "lr")}
    results["train"]["process_s"] = time.perf_counter() - train_start
    results["train"]["metrics"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    log(f"trained {summary_['steps']} steps at {summary_['tokens_per_s']:.0f} tokens/s")
    write_json(results, args.out)
    eval_start = time.perf_counter()
    generated = work / "captions" / "captions.json"  # next to it: the shards and their .done markers
    generate.main(["caption", "--config", str(run_dir), "--output", str(generated), "--device",
                   "cpu" if args.tiny else "cuda"])
    args.captions.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(generated, args.captions)
    shutil.copyfile(generated.with_suffix(".meta.json"), args.captions.with_suffix(".meta.json"))
    captions = json.loads(args.captions.read_text())
    results["generate"] = {"captions": len(captions), "wall_s": time.perf_counter() - eval_start,
                           "output": args.captions.name, "examples": captions[:5]}
    results["wall_s"] = time.perf_counter() - start
    write_json(results, args.out)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("bench", "e2e", "profile"))
    parser.add_argument("--out", type=Path, required=True, help="the stage's JSON")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (the suite's smoke test)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "gpu",
                        help="e2e: where the config-only LM, the shapes set and the run go")
    parser.add_argument("--captions", type=Path, default=None, help="e2e: the captions file (default: next to --out)")
    parser.add_argument("--profile-table", type=Path, default=None,
                        help="profile: the profiler tables (default: profile.txt next to --out)")
    parser.add_argument("--device", default=None, help="bench: default cuda if available, else cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for the MFU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 with --tiny, else 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.shape = "tiny" if args.tiny else "llama7b"
    args.threads = args.threads or (1 if args.tiny else 8)
    args.captions = args.captions or args.out.parent / "captions.json"
    args.profile_table = args.profile_table or args.out.parent / "profile.txt"
    args.command = " ".join(["python bench/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return {"bench": run_bench, "e2e": run_e2e, "profile": run_profile}[args.stage](args)


if __name__ == "__main__":
    main()
