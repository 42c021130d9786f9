"""Multimodal speed: training from the feature cache against the same step with the visual tokens already in memory
and with the encoder online, and generation throughput of the multimodal model against the bare LM, measured side
by side in one process.

    .venv/bin/python bench/multimodal_speed.py                                    # Tiny-ViT, JSON to bench/results/
    .venv/bin/python bench/multimodal_speed.py --vision tiny-vit,vit-b-32,vit-l-14

- Language model: the converted SmolLM2-135M-Instruct at `.cache/smollm2-135m-instruct` if it is there
  (`--language-model auto`), else (or with `--language-model random`) a random-init LLaMA of the same shape
  (hidden 576, intermediate 1536, 30 layers, 9 heads / 3 KV heads, vocabulary 49152, tied embeddings) with a
  word-level tokenizer. Excitor on the top 28 layers, K = 30, r = 16, `concat` visual prompts, gates set to 0.1,
  `key_association` auto.
- Vision (`--vision`, one or more): a frozen random-init open_clip ViT: `configs/open_clip/Tiny-ViT.json` (64 px,
  4 layers, 65 tokens of width 128, the prototype of docs/method.md), `ViT-B-32` (224 px, 12 layers, 50 tokens of
  width 768) or `ViT-L-14` (224 px, 24 layers, 257 tokens of width 1024, the paper's encoder).
- Training step (zero_grad + forward with LM loss + backward + AdamW step over the trainable tensors), on a batch
  of random token ids, three ways with the same weights: `in_memory` takes the batch's visual tokens from a tensor
  already in memory (the LM-and-adapter-only cost), `from_cache` reads them from a feature cache (built first,
  through `build_feature_cache`, from PNG files written here; memory-mapped reads and the host-to-device copy are
  timed), `online` runs the frozen encoder on already preprocessed images (decoding and preprocessing, which a
  DataLoader's workers would do, are not timed). The first loss of the cache and online paths is recorded to show
  that both compute the same thing (equal up to the cache's dtype).
- Generation: greedy, exactly `--new-tokens` new tokens per prompt (min_new_tokens = max_new_tokens), one batch of
  `--gen-batch` left-padded prompts; tokens/s = batch x new tokens / time of the call (tokenisation included) for
  the bare LM's `generate` and `MultimodalExcitor.generate` without images (language-only), with cached visual
  tokens, and with images through the online encoder.

Timed runs are interleaved round-robin (A, B, A, B, ...) after warm-up; medians of the wall clock and of the
process CPU time (steadier on a shared machine) are reported. CPU runs fp32; CUDA runs the frozen LM in bf16 under
bf16 autocast (trainable tensors and the encoder stay fp32) and also reports torch.cuda.max_memory_allocated per
training variant and the model FLOPs utilisation of the frozen LM's forward and backward.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from bench.timing import (  # noqa: E402
    add_output_arguments, argument_parser, autocast, command_line, decoder_flops, format_seconds, gpu_accounting,
    interleaved, model_flops_utilization, report, runtime_environment, setup_device, share_frozen_copy, summary,
    synchronize,
)
from mm_excitor import ExcitorConfig, count_parameters, excitor_blocks  # noqa: E402
from mm_excitor.feature_cache import build_feature_cache  # noqa: E402
from mm_excitor.decoding import Decoding  # noqa: E402
from mm_excitor.methods.excitor import MultimodalExcitor  # noqa: E402
from mm_excitor.vision import VisionConfig, VisionEncoder  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "multimodal_speed.json"
DEFAULT_LM = REPO / ".cache" / "smollm2-135m-instruct"
GATE_VALUE = 0.1
TARGETS = {"cache_over_in_memory_max": 1.05, "generation_over_bare_min": 0.95}

LM_SHAPES = {
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, tie_word_embeddings=False, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
}
EXCITOR = {"smollm2-135m": dict(num_layers=28, num_prompts=30, rank=16), "tiny": dict(num_layers=2, num_prompts=5,
                                                                                        rank=4)}
VISION = {
    "tiny-vit": dict(model_name="Tiny-ViT", model_config_file=str(REPO / "configs" / "open_clip" / "Tiny-ViT.json")),
    "vit-b-32": dict(model_name="ViT-B-32"),
    "vit-l-14": dict(model_name="ViT-L-14"),
}
PROMPTS = [
    "Describe the image in one sentence.",
    "What is in this picture?",
    "Write a short caption for the photo.",
    "What colour is the shape in the image?",
    "Describe the scene.",
    "Give a caption of the image, please.",
    "What do you see?",
    "A photo of",
]


# ---------------------------------------------------------------------------------------------------- helpers


def word_tokenizer(vocab_size: int, texts: Iterable[str] = PROMPTS):
    """A word-level tokenizer for a random-init LM (specials 0-3, then the words of `texts`, lower-cased)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for text in texts:
        for word in text.lower().replace(".", " . ").replace("?", " ? ").replace(",", " , ").split():
            vocab.setdefault(word, len(vocab))
    if len(vocab) > vocab_size:
        raise ValueError(f"the word tokenizer needs {len(vocab)} ids, the LM has {vocab_size}")
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")])
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build_language_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer, description): the local SmolLM2 if asked/available, else random init."""
    choice = args.language_model
    path = DEFAULT_LM if choice == "auto" else (None if choice == "random" else Path(choice))
    if args.lm_shape != "smollm2-135m":
        path = None  # only the SmolLM2 shape has a real checkpoint
    if path is not None and (path / "config.json").is_file():
        from mm_excitor.factory import load_language_model

        model, tokenizer = load_language_model(path, {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype])
        model = model.to(device)
        description = {"source": "pretrained", "path": str(path), "model_config": model.config.to_diff_dict()}
    else:
        if choice not in ("auto", "random"):
            raise SystemExit(f"--language-model {choice}: no config.json there")
        torch.manual_seed(args.seed)
        config = LlamaConfig(**LM_SHAPES[args.lm_shape])
        with torch.device(device):
            model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
        tokenizer = word_tokenizer(config.vocab_size)
        description = {"source": "random-init", "shape": args.lm_shape, "model_config": LM_SHAPES[args.lm_shape]}
    model.requires_grad_(False).eval()
    description["attn_implementation"] = model.config._attn_implementation
    description["parameters"] = count_parameters(model).total
    return model, tokenizer, description


def write_images(root: Path, count: int, seed: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    keys = []
    for i in range(count):
        key = f"img_{i:04d}.png"
        pixels = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / key)
        keys.append(key)
    return keys


# ---------------------------------------------------------------------------------------------------- benchmark


def multimodal(bare, tokenizer, config: ExcitorConfig, seed: int, **vision) -> MultimodalExcitor:
    """A multimodal model on the frozen LM's tensors; every one built with the same seed has the same weights."""
    torch.manual_seed(seed)
    model = MultimodalExcitor(share_frozen_copy(bare), tokenizer, config, **vision)
    with torch.no_grad():
        for block in excitor_blocks(model):
            block.gate.fill_(GATE_VALUE)
    return model


def run(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    log = (lambda *a: print("[multimodal_speed]", *a, flush=True)) if not args.quiet else (lambda *a: None)
    start = time.perf_counter()
    bare, tokenizer, lm_description = build_language_model(args, device, dtype)
    excitor_config = ExcitorConfig(**EXCITOR[args.lm_shape], visual_prompt_mode="concat")
    log(f"built LM ({lm_description['source']}) in {time.perf_counter() - start:.1f}s")
    results: dict[str, Any] = {
        "language_model": lm_description,
        "excitor_config": excitor_config.to_dict(),
        "excitor_gate_value": GATE_VALUE,
        "targets": TARGETS,
        "frozen_lm_train_step_flops": decoder_flops(bare.config, args.batch, args.train_seq, backward=True),
        "visions": {},
    }
    for vision in args.vision:
        vision_start = time.perf_counter()
        encoder = VisionEncoder(VisionConfig(**VISION[vision], init_seed=args.seed)).to(device)
        log(f"[{vision}] encoder {encoder.num_tokens} tokens x {encoder.width}")
        identity = {"vision_identity": encoder.identity()}
        models = {
            "in_memory": multimodal(bare, tokenizer, excitor_config, args.seed, **identity),
            "from_cache": multimodal(bare, tokenizer, excitor_config, args.seed, **identity),
            "online": multimodal(bare, tokenizer, excitor_config, args.seed, vision=encoder),
        }
        with tempfile.TemporaryDirectory(prefix="mm_speed_") as scratch:
            scratch = Path(scratch)
            (scratch / "images").mkdir()
            keys = write_images(scratch / "images", args.num_images, args.seed)
            cache_start = time.perf_counter()
            cache = build_feature_cache(encoder, scratch / "images", keys, scratch / "cache", batch_size=args.batch,
                                        shard_size=max(args.batch, 16), num_workers=0, dtype=args.cache_dtype,
                                        progress=False)
            cache_seconds = time.perf_counter() - cache_start
            log(f"[{vision}] feature cache of {len(keys)} images ({args.cache_dtype}) in {cache_seconds:.1f}s")
            from PIL import Image

            pixels = []
            for key in keys:
                with Image.open(scratch / "images" / key) as image:
                    pixels.append(encoder.preprocess(image.convert("RGB")))
            pixels = torch.stack(pixels).to(device)
            measured = measure(args, device, dtype, bare, tokenizer, models, cache, keys, pixels,
                               lambda *a, v=vision: log(f"[{v}]", *a))
        measured.update(
            trainable_params=count_parameters(models["from_cache"]).trainable,
            vision={"name": vision, "config": dict(VISION[vision]), "identity": encoder.identity(),
                    "num_tokens": encoder.num_tokens, "width": encoder.width, "random_init": True},
            feature_cache={"images": len(keys), "dtype": args.cache_dtype, "build_s": cache_seconds,
                           "images_per_s": len(keys) / cache_seconds,
                           "what": "build_feature_cache over PNG files (decode + preprocess + encoder + atomic "
                                   "shard writes), num_workers=0"},
            wall_s=time.perf_counter() - vision_start,
        )
        results["visions"][vision] = measured
        del models, encoder, cache
    results["wall_s"] = time.perf_counter() - start
    return results


def ratio(a: dict[str, Any], b: dict[str, Any], key: str = "median_s") -> float | None:
    return a[key] / b[key] if key in a and key in b else None


def measure(args, device, dtype, bare, tokenizer, models, cache, keys, pixels, log) -> dict[str, Any]:
    batch, seq = args.batch, args.train_seq
    batches = [list(range(i, i + batch)) for i in range(0, len(keys) - batch + 1, batch)]
    generator = torch.Generator().manual_seed(args.seed)
    vocab = bare.config.vocab_size
    token_batches = [torch.randint(3, vocab, (batch, seq), generator=generator).to(device) for _ in batches]
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    in_memory = cache.stack(keys).to(device)  # every image's visual tokens, already where the step needs them

    def visual_inputs(name: str, b: int) -> dict[str, torch.Tensor]:
        if name == "in_memory":
            return {"visual_tokens": in_memory[batches[b]]}
        if name == "from_cache":
            return {"visual_tokens": cache.stack([keys[i] for i in batches[b]]).to(device)}
        return {"images": pixels[batches[b]]}

    # ---- first loss of the cache and online paths, same weights, same batch
    with torch.no_grad(), autocast(device, dtype):
        ids = token_batches[0]
        loss_cache = models["from_cache"](ids, mask, ids, **visual_inputs("from_cache", 0)).loss
        loss_online = models["online"](ids, mask, ids, **visual_inputs("online", 0)).loss
    check = {"loss_from_cache": loss_cache.item(), "loss_online": loss_online.item(),
             "abs_difference": abs(loss_cache.item() - loss_online.item())}
    log(f"first loss: cache {check['loss_from_cache']:.6f} online {check['loss_online']:.6f}")

    # ---- training step: in memory vs from the cache vs online encoder
    steps, optimizers = {}, {}
    for name, model in models.items():
        model.train()
        optimizers[name] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        counter = iter(range(10**9))

        def step(model=model, optimizer=optimizers[name], counter=counter, name=name):
            b = next(counter) % len(batches)
            ids = token_batches[b]
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                loss = model(ids, mask, ids, **visual_inputs(name, b)).loss
            loss.backward()
            optimizer.step()
        steps[name] = step
    wall, cpu = interleaved(steps, max(args.warmup, 1), args.repeats, device)  # warm-up creates the AdamW state
    train = {name: summary(wall[name], cpu and cpu[name]) for name in wall}
    log("train step: " + ", ".join(f"{k} {v['median_s']:.3f}s" for k, v in train.items()))
    train_ratios = {
        "from_cache_over_in_memory": ratio(train["from_cache"], train["in_memory"]),
        "from_cache_over_in_memory_cpu_time": ratio(train["from_cache"], train["in_memory"], "cpu_median_s"),
        "online_over_in_memory": ratio(train["online"], train["in_memory"]),
        "online_over_in_memory_cpu_time": ratio(train["online"], train["in_memory"], "cpu_median_s"),
        "from_cache_over_online": ratio(train["from_cache"], train["online"]),
    }
    gpu = gpu_accounting(device, args.peak_tflops)
    if gpu["measured"]:
        flops = decoder_flops(bare.config, batch, seq, backward=True)
        gpu["mfu_frozen_lm_train_step"] = {
            name: model_flops_utilization(flops, stats["median_s"], gpu["peak_bf16_tflops"])
            for name, stats in train.items()}
        gpu["max_memory_allocated_bytes"] = {}
        for name in steps:
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            steps[name]()
            synchronize(device)
            gpu["max_memory_allocated_bytes"][name] = torch.cuda.max_memory_allocated(device)
    for model in models.values():
        model.eval()

    # ---- generation throughput: bare LM vs multimodal (language-only, cached tokens, online encoder)
    n_new, gen_batch = args.new_tokens, args.gen_batch
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(gen_batch)]
    gen_keys = [keys[i % len(keys)] for i in range(gen_batch)]
    gen_pixels = pixels[[i % len(keys) for i in range(gen_batch)]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths: dict[str, int] = {}

    def bare_generate():
        encoded = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt").to(device)
        with torch.no_grad(), autocast(device, dtype):
            out = bare.generate(**encoded, do_sample=False, num_beams=1, max_new_tokens=n_new,
                                min_new_tokens=n_new, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        lengths["bare_lm"] = out.shape[1] - encoded["input_ids"].shape[1]

    decoding = Decoding(batch_size=gen_batch, max_new_tokens=n_new, min_new_tokens=n_new)

    def generate(name: str, **inputs):
        def run():
            encoded = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")  # as timed above
            with autocast(device, dtype):
                models[name].generate(**encoded, **inputs, decoding=decoding)
        return run

    fns = {"bare_lm": bare_generate, "language_only": generate("from_cache"),
           "from_cache": generate("from_cache", visual_tokens=cache.stack(gen_keys).to(device)),
           "online": generate("online", images=gen_pixels)}
    wall, cpu = interleaved(fns, args.warmup, args.gen_repeats or args.repeats, device)
    if lengths["bare_lm"] != n_new:
        raise RuntimeError(f"generation produced {lengths['bare_lm']} new tokens, not {n_new}")
    tokens = gen_batch * n_new
    generation = {name: summary(wall[name], cpu and cpu[name], tokens) for name in wall}
    for name in ("language_only", "from_cache", "online"):
        generation[name]["throughput_ratio_over_bare_lm"] = ratio(generation["bare_lm"], generation[name])
        generation[name]["cpu_time_throughput_ratio_over_bare_lm"] = ratio(generation["bare_lm"], generation[name],
                                                                           "cpu_median_s")
    log("generation tokens/s: " + ", ".join(f"{k} {v['tokens_per_s']:.1f}" for k, v in generation.items()))
    return {
        "loss_check": check,
        "train_step": {
            "what": "zero_grad(set_to_none) + forward with LM loss (labels = input_ids) + backward + AdamW step; "
                    "in_memory takes the visual tokens from a tensor in memory, from_cache includes the "
                    "memory-mapped read of the batch's visual tokens and their copy to the device, online the "
                    "frozen encoder's forward on preprocessed images (decoding/preprocessing not timed)",
            "batch": batch, "seq_len": seq, **train, **train_ratios,
        },
        "generation": {
            "what": "greedy, exactly new_tokens new tokens per prompt (min_new_tokens = max_new_tokens), one batch "
                    "of left-padded prompts; tokens/s = batch x new_tokens / wall time of the call",
            "batch": gen_batch, "new_tokens": n_new, "prompts": prompts, **generation,
        },
        "gpu": gpu,
    }


def environment(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    import os

    return {
        **runtime_environment(device),
        "dtype_frozen_lm": str(dtype).replace("torch.", ""),
        "dtype_trainable_and_encoder": "float32",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "generation_repeats": args.gen_repeats or args.repeats,
        "timing": "interleaved round-robin after warm-up, medians reported; on CPU also the process CPU time",
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "seed": args.seed,
        "command": args.command,
    }


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the medians and ratios, one block of rows per vision encoder."""

    def rat(value, cpu_value):
        return f"**{value:.3f}**" + (f" (cpu {cpu_value:.3f})" if cpu_value is not None else "")

    env, lm = results["environment"], results["language_model"]
    lm_name = "SmolLM2-135M-Instruct" if lm["source"] == "pretrained" else f"random-init {lm['shape']}"
    rows = [("encoder", "measurement", "reference", "compared", "ratio"), ("---", "---", "---", "---", "---")]
    notes = []
    for name, r in results["visions"].items():
        t, g, v = r["train_step"], r["generation"], r["vision"]
        vision = f"{name} ({v['num_tokens']}x{v['width']})"
        step = f"train step, batch {t['batch']}x{t['seq_len']} (s)"
        rows.append((vision, step, f"in memory {format_seconds(t['in_memory'])}",
                     f"from cache {format_seconds(t['from_cache'])}",
                     rat(t["from_cache_over_in_memory"], t["from_cache_over_in_memory_cpu_time"]) + " cache / memory"))
        rows.append((vision, step, f"in memory {format_seconds(t['in_memory'])}",
                     f"online encoder {format_seconds(t['online'])}",
                     rat(t["online_over_in_memory"], t["online_over_in_memory_cpu_time"]) + " online / memory"))
        for key, label in (("language_only", "MM, no images"), ("from_cache", "MM, cached tokens"),
                           ("online", "MM, online encoder")):
            rows.append((vision, f"generation, batch {g['batch']} x {g['new_tokens']} new tokens (tokens/s)",
                         f"bare LM {g['bare_lm']['tokens_per_s']:.1f}", f"{label} {g[key]['tokens_per_s']:.1f}",
                         rat(g[key]["throughput_ratio_over_bare_lm"], g[key]["cpu_time_throughput_ratio_over_bare_lm"])
                         + " MM / bare"))
        check = r["loss_check"]
        targets = results["targets"]
        cache_ok = t["from_cache_over_in_memory"] <= targets["cache_over_in_memory_max"]
        gen_ok = {k: g[k]["throughput_ratio_over_bare_lm"] >= targets["generation_over_bare_min"]
                  for k in ("language_only", "from_cache")}
        notes.append(
            f"{name}: {r['trainable_params']:,} trainable (incl. projection); feature cache {r['feature_cache']['dtype']} "
            f"built at {r['feature_cache']['images_per_s']:.1f} images/s; first loss from cache "
            f"{check['loss_from_cache']:.6f} vs online {check['loss_online']:.6f}. Targets: cache step <= "
            f"{targets['cache_over_in_memory_max']:.2f}x in memory: {'yes' if cache_ok else 'NO'}; generation >= "
            f"{targets['generation_over_bare_min']:.2f}x bare, no images: {'yes' if gen_ok['language_only'] else 'NO'}, "
            f"cached tokens: {'yes' if gen_ok['from_cache'] else 'NO'}"
        )
        gpu = r["gpu"]
        if gpu["measured"]:
            notes.append(f"{name}: MFU of the frozen LM per train step: " + ", ".join(
                f"{k} {m:.1%}" for k, m in gpu["mfu_frozen_lm_train_step"].items() if m is not None)
                + "; max memory allocated: " + ", ".join(
                f"{k} {b / 2**20:,.0f} MiB" for k, b in gpu["max_memory_allocated_bytes"].items()))
        else:
            notes.append(f"{name}: {gpu['note']}")
    excitor = results["excitor_config"]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        f"LM: {lm_name} ({lm['parameters'] / 1e6:.1f}M params, {env['dtype_frozen_lm']}), Excitor top "
        f"{excitor['num_layers']} layers K={excitor['num_prompts']} r={excitor['rank']} concat, key_association "
        f"{excitor['key_association']}; encoders random-init. torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['device']} ({env['device_name']}, {env['cpu_count']} cores), torch threads {env['torch_threads']}, "
        f"{env['warmup']} warm-up + {env['repeats']} (train) / {env['generation_repeats']} (generation) interleaved "
        f"repeats, medians (cpu = process CPU time); load average at start {env['load_average_at_start']}.",
        f"Command: `{env['command']}`",
        *[f"- {note}" for note in notes],
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument("--language-model", default="auto",
                        help="auto (.cache/smollm2-135m-instruct if present, else random init) | random | a local "
                             "Hugging Face directory")
    parser.add_argument("--lm-shape", choices=sorted(LM_SHAPES), default="smollm2-135m",
                        help="shape of the random-init LM (tiny: smoke tests)")
    parser.add_argument("--vision", default="tiny-vit",
                        help=f"comma-separated encoders, from {sorted(VISION)}")
    parser.add_argument("--batch", type=int, default=8, help="training batch (images and sequences)")
    parser.add_argument("--train-seq", type=int, default=32, help="tokens per training sequence")
    parser.add_argument("--num-images", type=int, default=32, help="images in the feature cache (batches cycle)")
    parser.add_argument("--cache-dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--gen-batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement")
    parser.add_argument("--gen-repeats", type=int, default=None, help="timed generation rounds (default: repeats)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (1: steadiest on a shared CPU; 2 threads next to other busy "
                             "processes on 2 cores ran 4-10x slower in our runs)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak for the MFU (default: from bench.timing.PEAK_BF16_TFLOPS)")
    parser.add_argument("--seed", type=int, default=0)
    add_output_arguments(parser, DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = setup_device(args.threads, args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.command is None:
        args.command = command_line("bench/multimodal_speed.py", argv)
    if args.num_images < args.batch or args.num_images < 1:
        raise SystemExit("--num-images must be at least --batch")
    args.vision = [v.strip() for v in args.vision.split(",") if v.strip()]
    unknown = [v for v in args.vision if v not in VISION]
    if not args.vision or unknown:
        raise SystemExit(f"--vision: unknown encoders {unknown}; choose from {sorted(VISION)}")
    results: dict[str, Any] = {"environment": environment(args, device, dtype)}
    results.update(run(args, device, dtype))
    return report(results, format_table, args.out, args.quiet, results.pop("wall_s"))


if __name__ == "__main__":
    main()
