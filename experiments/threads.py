"""CPU threads on a shared machine: a training step of the demo's model with OpenMP threads that spin while idle
(`OMP_WAIT_POLICY=ACTIVE`) or sleep (`PASSIVE`, what mm_excitor sets), on 1 and on all cores, alone and next to
another busy process.

    .venv/bin/python experiments/threads.py                 # JSON to experiments/results/threads.json

Each setting runs in a fresh process (the wait policy is read when torch's OpenMP runtime starts): the multimodal
Excitor of configs/demo.yaml on the converted SmolLM2-135M-Instruct (`make demo` converts it), a batch of 16
captions of 24 tokens with 65 visual tokens each, forward + backward + AdamW; the median of the timed steps after
one warm-up step. "Busy" starts a competing process (a 1-thread matmul loop) first.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timing import cpu_name  # noqa: E402
from mm_excitor.io import atomic_write_json  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "threads.json"
LANGUAGE_MODEL = REPO / ".cache" / "smollm2-135m-instruct"

STEP = r"""
import json, statistics, sys, time
import torch
from mm_excitor import ExcitorConfig
from mm_excitor.factory import load_language_model
from mm_excitor.methods.excitor import MultimodalExcitor
steps, threads, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
torch.manual_seed(0)
lm, tokenizer = load_language_model(path)
model = MultimodalExcitor(lm, tokenizer, ExcitorConfig(num_layers=28, num_prompts=30, rank=16,
                          visual_prompt_mode="concat"), vision_identity={"num_tokens": 65, "width": 128})
ids = torch.randint(100, 1000, (16, 24))
tokens = torch.randn(16, 65, 128)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
times = []
for _ in range(steps + 1):
    start = time.perf_counter()
    model(ids, torch.ones_like(ids), labels=ids, visual_tokens=tokens).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    times.append(time.perf_counter() - start)
print(json.dumps({"step_s": statistics.median(times[1:]), "steps_s": times[1:]}))
"""

BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"


def run_setting(policy: str, threads: int, busy: bool, steps: int) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    competitor = subprocess.Popen([sys.executable, "-c", BUSY], env=env) if busy else None
    try:
        if competitor is not None:
            time.sleep(2.0)  # let it start spinning
        result = subprocess.run([sys.executable, "-c", STEP, str(steps), str(threads), str(LANGUAGE_MODEL)], env=env,
                                cwd=REPO,
                                capture_output=True, text=True, timeout=1800)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if result.returncode != 0:
        raise RuntimeError(f"step process failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setting (after one warm-up step)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not (LANGUAGE_MODEL / "config.json").is_file():
        raise SystemExit(f"error: {LANGUAGE_MODEL} is missing: run `python -m mm_excitor.smollm2` (make demo does) first")
    cores = len(os.sched_getaffinity(0))
    rows = []
    for busy, threads, policy in itertools.product((False, True), sorted({1, cores}), ("ACTIVE", "PASSIVE")):
        measured = run_setting(policy, threads, busy, args.steps)
        rows.append({"busy": busy, "threads": threads, "policy": policy, **measured})
        print(f"{'busy' if busy else 'idle':4}  {threads} thread(s)  {policy:7}  step {measured['step_s']:.2f}s",
              flush=True)
    by = {(r["busy"], r["threads"], r["policy"]): r["step_s"] for r in rows}
    ratios = {f"{'busy' if busy else 'idle'}_{threads}threads_passive_over_active":
              by[(busy, threads, "PASSIVE")] / by[(busy, threads, "ACTIVE")]
              for busy, threads in itertools.product((False, True), sorted({1, cores}))}
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    results = {"cpu": cpu_name(), "cores": cores, "steps": args.steps, "rows": rows, "ratios": ratios}
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
