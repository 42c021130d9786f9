"""Timing helpers shared by the benchmark scripts, so that both measure and report in exactly the same way.

Imported as `bench.timing`: the scripts put the repository root on sys.path (pytest does too).
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import transformers


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA kernels, so that a timer brackets the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def share_frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` whose parameter and buffer tensors are the original ones (nothing is duplicated).

    Lets several adapted variants sit on one resident copy of the frozen base weights.
    """
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def setup_device(threads: int, device: str | None) -> torch.device:
    """Set torch's thread count (before anything records it) and pick the device: cuda if available, else cpu."""
    torch.set_num_threads(threads)
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]] | None]:
    """Time each callable `repeats` times after `warmup` untimed calls, in round-robin order.

    Round-robin spreads machine noise over all sides alike. Returns wall-clock seconds and, on CPU, this
    process's CPU seconds (time.process_time, all threads): on a shared machine the CPU time is far less
    sensitive to other processes than the wall time.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            if round_index >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, (cpu if device.type == "cpu" else None)


def summary(wall: list[float], cpu: list[float] | None, tokens: int | None = None) -> dict[str, Any]:
    """Median (robust to the odd disturbed run), range and samples; with `tokens`, also tokens per second."""
    result: dict[str, Any] = {"median_s": statistics.median(wall), "min_s": min(wall), "max_s": max(wall),
                              "samples_s": wall}
    if cpu is not None:
        result.update(cpu_median_s=statistics.median(cpu), cpu_samples_s=cpu)
    if tokens is not None:
        result["tokens"] = tokens
        result["tokens_per_s"] = tokens / result["median_s"]
    return result


def format_seconds(stats: dict[str, Any]) -> str:
    """A `summary`'s median for the Markdown tables, with the CPU-time median where there is one."""
    text = f"{stats['median_s']:.3f} s"
    return text + (f" (cpu {stats['cpu_median_s']:.3f} s)" if "cpu_median_s" in stats else "")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware that the timings depend on (the first fields of each script's `environment`)."""
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def write_results(results: dict[str, Any], out: Path, quiet: bool) -> None:
    """Print the results' table, write the JSON to `out` and say where, so both scripts' outputs look alike."""
    if not quiet:
        print(results["table"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if not quiet:
        print(f"wrote {out} ({results['environment']['wall_s']:.0f}s)")
