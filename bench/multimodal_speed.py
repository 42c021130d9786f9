"""Multimodal speed: training step from the feature cache vs with the encoder online, and generation throughput
of the multimodal model vs the bare LM, measured side by side in one process.

    .venv/bin/python bench/multimodal_speed.py                         # JSON to bench/results/multimodal_speed.json
    .venv/bin/python bench/multimodal_speed.py --vision vit-b-32       # a random-init ViT-B-32 at 224 px

- Language model: the converted SmolLM2-135M-Instruct at `.cache/smollm2-135m-instruct` if it is there
  (`--language-model auto`), else (or with `--language-model random`) a random-init LLaMA of the same shape
  (hidden 576, intermediate 1536, 30 layers, 9 heads / 3 KV heads, vocabulary 49152, tied embeddings) with a
  word-level tokenizer. Excitor on the top 28 layers, K = 30, r = 16, `concat` visual prompts, gates set to 0.1.
- Vision: a frozen random-init open_clip ViT: `configs/open_clip/Tiny-ViT.json` (64 px, 4 layers, 65 tokens of
  width 128, the prototype of docs/method.md) or `ViT-B-32` (224 px, 12 layers, 50 tokens of width 768).
- Training step (zero_grad + forward with LM loss + backward + AdamW step over the trainable tensors), on a batch
  of random token ids: `cache` reads the batch's visual tokens from a feature cache (built first, through
  `build_feature_cache`, from PNG files written here; memory-mapped reads and the host-to-device copy are timed);
  `online` runs the frozen encoder on already preprocessed images (decoding and preprocessing, which a
  DataLoader's workers would do, are not timed). Both models start from the same weights; their first loss is
  recorded to show that both paths compute the same thing (equal up to the cache's dtype).
- Generation: greedy, exactly `--new-tokens` new tokens per prompt (min_new_tokens = max_new_tokens), one batch of
  `--gen-batch` left-padded prompts; tokens/s = batch x new tokens / wall time of the call (tokenisation
  included) for the bare LM's `generate`, `MultimodalExcitor.generate` with cached visual tokens, and with images
  through the online encoder.

Timed runs are interleaved round-robin (A, B, A, B, ...) after warm-up; medians are reported. The defaults take
about 75 s on 2 idle cores (1 torch thread). CPU runs fp32;
CUDA runs the frozen LM in bf16 (trainable tensors and the encoder stay fp32).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from bench.timing import (  # noqa: E402
    format_seconds, interleaved, runtime_environment, setup_device, share_frozen_copy, summary, write_results,
)
from mm_excitor import ExcitorConfig, count_parameters, excitor_blocks  # noqa: E402
from mm_excitor.feature_cache import build_feature_cache  # noqa: E402
from mm_excitor.generation import Decoding  # noqa: E402
from mm_excitor.methods.excitor import MultimodalExcitor  # noqa: E402
from mm_excitor.vision import VisionConfig, VisionEncoder  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "multimodal_speed.json"
DEFAULT_LM = REPO / ".cache" / "smollm2-135m-instruct"
GATE_VALUE = 0.1

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


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer for the random-init LM (specials 0-3, then the words of PROMPTS)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for prompt in PROMPTS:
        for word in prompt.lower().replace(".", " . ").replace("?", " ? ").replace(",", " , ").split():
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


def run(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    log = (lambda *a: print("[multimodal_speed]", *a, flush=True)) if not args.quiet else (lambda *a: None)
    start = time.perf_counter()
    bare, tokenizer, lm_description = build_language_model(args, device, dtype)
    vision_config = VisionConfig(**VISION[args.vision], init_seed=args.seed)
    encoder = VisionEncoder(vision_config).to(device)
    excitor_config = ExcitorConfig(**EXCITOR[args.lm_shape], visual_prompt_mode="concat")
    log(f"built LM ({lm_description['source']}) and encoder {vision_config.model_name} "
        f"({encoder.num_tokens} tokens x {encoder.width}) in {time.perf_counter() - start:.1f}s")

    # Two multimodal models on the same frozen LM tensors: one reads a feature cache, one runs the encoder.
    torch.manual_seed(args.seed)
    from_cache = MultimodalExcitor(share_frozen_copy(bare), tokenizer, excitor_config,
                                   vision_identity=encoder.identity())
    with torch.no_grad():
        for block in excitor_blocks(from_cache):
            block.gate.fill_(GATE_VALUE)
    online = MultimodalExcitor(share_frozen_copy(bare), tokenizer, excitor_config, encoder)
    trainable = {name: p for name, p in from_cache.named_parameters() if p.requires_grad}
    missing = online.load_state_dict(trainable, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys  # the same trainable weights

    with tempfile.TemporaryDirectory(prefix="mm_speed_") as scratch:
        scratch = Path(scratch)
        (scratch / "images").mkdir()
        keys = write_images(scratch / "images", args.num_images, args.seed)
        cache_start = time.perf_counter()
        cache = build_feature_cache(encoder, scratch / "images", keys, scratch / "cache", batch_size=args.batch,
                                    shard_size=max(args.batch, 16), num_workers=0, dtype=args.cache_dtype,
                                    progress=False)
        cache_seconds = time.perf_counter() - cache_start
        log(f"feature cache of {len(keys)} images ({args.cache_dtype}) in {cache_seconds:.1f}s")
        from PIL import Image

        pixels = []
        for key in keys:
            with Image.open(scratch / "images" / key) as image:
                pixels.append(encoder.preprocess(image.convert("RGB")))
        pixels = torch.stack(pixels).to(device)
        result = measure(args, device, bare, tokenizer, from_cache, online, cache, keys, pixels, log)
    result.update(
        language_model=lm_description,
        excitor_config=excitor_config.to_dict(),
        excitor_gate_value=GATE_VALUE,
        trainable_params=count_parameters(from_cache).trainable,
        vision={"name": args.vision, "config": {k: v for k, v in VISION[args.vision].items()},
                "identity": encoder.identity(), "num_tokens": encoder.num_tokens, "width": encoder.width,
                "random_init": True},
        feature_cache={"images": len(keys), "dtype": args.cache_dtype, "build_s": cache_seconds,
                       "images_per_s": len(keys) / cache_seconds,
                       "what": "build_feature_cache over PNG files (decode + preprocess + encoder + atomic "
                               "shard writes), num_workers=0"},
        wall_s=time.perf_counter() - start,
    )
    return result


def measure(args, device, bare, tokenizer, from_cache, online, cache, keys, pixels, log) -> dict[str, Any]:
    batch, seq = args.batch, args.train_seq
    batches = [list(range(i, i + batch)) for i in range(0, len(keys) - batch + 1, batch)]
    generator = torch.Generator().manual_seed(args.seed)
    vocab = bare.config.vocab_size
    token_batches = [torch.randint(3, vocab, (batch, seq), generator=generator).to(device) for _ in batches]
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)

    # ---- first loss of both paths, same weights, same batch: the cache computes what the encoder computes
    with torch.no_grad():
        ids = token_batches[0]
        loss_cache = from_cache(ids, mask, ids, visual_tokens=cache.stack([keys[i] for i in batches[0]])).loss
        loss_online = online(ids, mask, ids, images=pixels[batches[0]]).loss
    check = {"loss_from_cache": loss_cache.item(), "loss_online": loss_online.item(),
             "abs_difference": abs(loss_cache.item() - loss_online.item())}
    log(f"first loss: cache {check['loss_from_cache']:.6f} online {check['loss_online']:.6f}")

    # ---- training step: cache vs online encoder
    steps = {}
    for name, model in (("from_cache", from_cache), ("online_encoder", online)):
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        counter = iter(range(10**9))

        def step(model=model, optimizer=optimizer, counter=counter, name=name):
            b = next(counter) % len(batches)
            ids = token_batches[b]
            optimizer.zero_grad(set_to_none=True)
            if name == "from_cache":
                inputs = {"visual_tokens": cache.stack([keys[i] for i in batches[b]])}
            else:
                inputs = {"images": pixels[batches[b]]}
            loss = model(ids, mask, ids, **inputs).loss
            loss.backward()
            optimizer.step()
        steps[name] = step
    wall, cpu = interleaved(steps, max(args.warmup, 1), args.repeats, device)  # warm-up creates the AdamW state
    train = {name: summary(wall[name], cpu and cpu[name]) for name in wall}
    train_ratio = train["from_cache"]["median_s"] / train["online_encoder"]["median_s"]
    log(f"train step: cache {train['from_cache']['median_s']:.3f}s online {train['online_encoder']['median_s']:.3f}s")
    for model in (from_cache, online):
        model.eval()

    # ---- generation throughput: bare LM vs multimodal (cached tokens / online encoder)
    n_new, gen_batch = args.new_tokens, args.gen_batch
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(gen_batch)]
    gen_keys = [keys[i % len(keys)] for i in range(gen_batch)]
    gen_pixels = pixels[[i % len(keys) for i in range(gen_batch)]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths: dict[str, int] = {}

    def bare_generate():
        encoded = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt").to(device)
        with torch.no_grad():
            out = bare.generate(**encoded, do_sample=False, num_beams=1, max_new_tokens=n_new,
                                min_new_tokens=n_new, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        lengths["bare_lm"] = out.shape[1] - encoded["input_ids"].shape[1]

    decoding = Decoding(batch_size=gen_batch, max_new_tokens=n_new, min_new_tokens=n_new)

    def cached_generate():
        encoded = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
        from_cache.generate(**encoded, visual_tokens=cache.stack(gen_keys), decoding=decoding)

    def online_generate():
        encoded = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
        online.generate(**encoded, images=gen_pixels, decoding=decoding)

    fns = {"bare_lm": bare_generate, "multimodal_from_cache": cached_generate,
           "multimodal_online_encoder": online_generate}
    wall, cpu = interleaved(fns, args.warmup, args.gen_repeats or args.repeats, device)
    if lengths["bare_lm"] != n_new:
        raise RuntimeError(f"generation produced {lengths['bare_lm']} new tokens, not {n_new}")
    tokens = gen_batch * n_new
    generation = {name: summary(wall[name], cpu and cpu[name], tokens) for name in wall}
    for name in ("multimodal_from_cache", "multimodal_online_encoder"):
        generation[name]["throughput_ratio_over_bare_lm"] = (
            generation[name]["tokens_per_s"] / generation["bare_lm"]["tokens_per_s"])
    log("generation tokens/s: " + ", ".join(f"{k} {v['tokens_per_s']:.1f}" for k, v in generation.items()))
    return {
        "loss_check": check,
        "train_step": {
            "what": "zero_grad(set_to_none) + forward with LM loss (labels = input_ids) + backward + AdamW step; "
                    "from_cache includes the memory-mapped read of the batch's visual tokens, online_encoder the "
                    "frozen encoder's forward on preprocessed images (decoding/preprocessing not timed)",
            "batch": batch, "seq_len": seq, **train,
            "ratio_from_cache_over_online": train_ratio,
            "cpu_time_ratio_from_cache_over_online": (train["from_cache"]["cpu_median_s"]
                                                      / train["online_encoder"]["cpu_median_s"]
                                                      if cpu else None),
        },
        "generation": {
            "what": "greedy, exactly new_tokens new tokens per prompt (min_new_tokens = max_new_tokens), one batch "
                    "of left-padded prompts; tokens/s = batch x new_tokens / wall time of the call",
            "batch": gen_batch, "new_tokens": n_new, "prompts": prompts, **generation,
        },
    }


def environment(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {
        **runtime_environment(device),
        "dtype_frozen_lm": str(dtype).replace("torch.", ""),
        "dtype_trainable_and_encoder": "float32",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "generation_repeats": args.gen_repeats or args.repeats,
        "timing": "interleaved round-robin after warm-up, medians reported",
        "seed": args.seed,
        "command": args.command,
    }


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the medians and ratios."""

    t, g, env = results["train_step"], results["generation"], results["environment"]
    lm = results["language_model"]
    lm_name = ("SmolLM2-135M-Instruct" if lm["source"] == "pretrained" else f"random-init {lm['shape']}")
    vision = f"{results['vision']['name']} ({results['vision']['num_tokens']}x{results['vision']['width']})"
    rows = [("measurement", "reference", "multimodal", "ratio"), ("---", "---", "---", "---")]
    rows.append((f"train step, batch {t['batch']}x{t['seq_len']} (s, lower is better)",
                 f"online encoder {format_seconds(t['online_encoder'])}",
                 f"from cache {format_seconds(t['from_cache'])}",
                 f"**{t['ratio_from_cache_over_online']:.3f}** (cache / online)"))
    for name, label in (("multimodal_from_cache", "MM, cached tokens"),
                        ("multimodal_online_encoder", "MM, online encoder")):
        rows.append((f"generation, batch {g['batch']} x {g['new_tokens']} new tokens (tokens/s)",
                     f"bare LM {g['bare_lm']['tokens_per_s']:.1f}", f"{label} {g[name]['tokens_per_s']:.1f}",
                     f"**{g[name]['throughput_ratio_over_bare_lm']:.3f}** (MM / bare)"))
    fc = results["feature_cache"]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    check = results["loss_check"]
    lines += [
        "",
        f"LM: {lm_name} ({lm['parameters'] / 1e6:.1f}M params, {env['dtype_frozen_lm']}), Excitor top "
        f"{results['excitor_config']['num_layers']} layers K={results['excitor_config']['num_prompts']} "
        f"r={results['excitor_config']['rank']} concat ({results['trainable_params']:,} trainable incl. "
        f"projection); encoder: random-init {vision}; feature cache {fc['dtype']}, built at "
        f"{fc['images_per_s']:.1f} images/s. torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['device']} ({env['device_name']}, {env['cpu_count']} cores), torch threads {env['torch_threads']}, "
        f"{env['warmup']} warm-up + {env['repeats']} (train) / {env['generation_repeats']} (generation) "
        f"interleaved repeats, medians (cpu = process CPU time). First loss from cache "
        f"{check['loss_from_cache']:.6f} vs online {check['loss_online']:.6f}.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--language-model", default="auto",
                        help="auto (.cache/smollm2-135m-instruct if present, else random init) | random | a local "
                             "Hugging Face directory")
    parser.add_argument("--lm-shape", choices=sorted(LM_SHAPES), default="smollm2-135m",
                        help="shape of the random-init LM (tiny: smoke tests)")
    parser.add_argument("--vision", choices=sorted(VISION), default="tiny-vit")
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = setup_device(args.threads, args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.command is None:
        args.command = " ".join(["python", "bench/multimodal_speed.py", *(sys.argv[1:] if argv is None else argv)])
    if args.num_images < args.batch or args.num_images < 1:
        raise SystemExit("--num-images must be at least --batch")
    results: dict[str, Any] = {"environment": environment(args, device, dtype)}
    results.update(run(args, device, dtype))
    results["environment"]["wall_s"] = results.pop("wall_s")
    results["table"] = format_table(results)
    write_results(results, args.out, args.quiet)
    return results


if __name__ == "__main__":
    main()
