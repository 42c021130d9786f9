"""python -m mm_excitor.delia {sample,pool}: self-sample a pool, or grow a synthetic pool from seed instructions.

Under torchrun (or with RANK/WORLD_SIZE set by hand, one process per rank) `sample` shards the pool; see
mm_excitor/delia/README.md. Bad input ends with one line `error: ...` and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

import torch
import torch.distributed

from ..cli import run_cli
from ..train.distributed import cleanup_distributed, init_distributed
from .pools import BAD_RECORD_POLICIES, POOL_FORMATS, load_pool
from .sampling import SamplingConfig, meta_path, sample_answers
from .selfinstruct import PoolGenerationConfig, generate_pool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mm_excitor.delia", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="sample the model's own answer to every pool query ([q, r, q])")
    _model_arguments(sample)
    sample.add_argument("--pool", required=True, help="general-instruction pool (JSON list or JSON lines)")
    sample.add_argument("--format", default="auto", choices=("auto", *POOL_FORMATS))
    sample.add_argument("--on-bad-record", default="error", choices=BAD_RECORD_POLICIES)
    sample.add_argument("--out", required=True, help="output JSON lines: {id, messages: [user, assistant], finish}")
    defaults = SamplingConfig()
    sample.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    sample.add_argument("--temperature", type=float, default=defaults.temperature)
    sample.add_argument("--top-p", type=float, default=defaults.top_p)
    sample.add_argument("--batch-size", type=int, default=defaults.batch_size)
    sample.add_argument("--seed", type=int, default=defaults.seed)
    sample.add_argument("--limit", type=int, default=None, help="sample the first N pool records only")
    sample.add_argument("--max-prompt-tokens", type=int, default=defaults.max_prompt_tokens)
    sample.add_argument("--system-prompt", default=None, help="a system turn before [q, r, q]")
    sample.set_defaults(run=_sample)

    pool = commands.add_parser("pool", help="grow a synthetic pool from seed instructions (self-instruct)")
    _model_arguments(pool)
    pool.add_argument("--seeds", required=True, help="seed pool, e.g. data/delia/seed_tasks.jsonl (any pool format)")
    pool.add_argument("--out", required=True, help="output qa pool (JSON lines)")
    pool_defaults = PoolGenerationConfig()
    for field in fields(PoolGenerationConfig):
        pool.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(pool_defaults, field.name)),
                          default=getattr(pool_defaults, field.name))
    pool.set_defaults(run=_pool)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="local Hugging Face directory of the frozen LM")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cuda if available (under torchrun: this rank's GPU)")
    parser.add_argument("--no-progress", action="store_true")


def _sample(args: argparse.Namespace) -> None:
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            batch_size=args.batch_size, seed=args.seed, limit=args.limit,
                            max_prompt_tokens=args.max_prompt_tokens, system_prompt=args.system_prompt)
    pool = load_pool(args.pool, args.format, args.on_bad_record)
    rank, world_size, device = _launch(args.device)
    distributed = torch.distributed.is_initialized()
    try:
        model, tokenizer = _load_model(args, device)
        info = {"pool": str(pool.path), "format": pool.format, "n_bad_records_skipped": len(pool.skipped),
                "bad_records": pool.skipped[:20]}
        merged = sample_answers(model, tokenizer, pool.records, config, args.out, rank=rank, world_size=world_size,
                                progress=not args.no_progress, info=info)
    finally:
        cleanup_distributed()
    if pool.skipped:
        print(f"skipped {len(pool.skipped)} bad records of {pool.path} (first: {pool.skipped[0]})", file=sys.stderr)
    if merged is None:
        writer = "rank 0 writes" if distributed else "the last rank to finish writes"
        print(f"rank {rank}: its share is done; {writer} {args.out}")
    else:
        print(f"wrote {args.out} and {meta_path(args.out)}")


def _pool(args: argparse.Namespace) -> None:
    config = PoolGenerationConfig(**{f.name: getattr(args, f.name) for f in fields(PoolGenerationConfig)})
    seeds = load_pool(args.seeds)
    _, _, device = _launch(args.device)
    model, tokenizer = _load_model(args, device)
    out = generate_pool(model, tokenizer, [r.query for r in seeds.records], config, args.out,
                        progress=not args.no_progress, info={"seeds": str(seeds.path)})
    print(f"wrote {out} ({config.size} synthetic records)")


def _launch(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (MASTER_ADDR set) the process group is joined, and rank 0 merges
    after a barrier; with RANK/WORLD_SIZE set by hand there is no group, and the last rank to finish merges."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")
    if "MASTER_ADDR" in os.environ:
        info = init_distributed(device)
        return info.rank, info.world_size, info.device
    try:
        rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return rank, world_size, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def _load_model(args: argparse.Namespace, device: torch.device):
    from ..factory import load_language_model

    model, tokenizer = load_language_model(args.model, args.dtype)
    return model.to(device), tokenizer


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
