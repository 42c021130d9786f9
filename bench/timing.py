"""Measurement helpers shared by the benchmark scripts and the studies, so that all measure and report alike.

Imported as `bench.timing`: the scripts put the repository root on sys.path (pytest does too).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import transformers

from mm_excitor.io import atomic_write_text


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


def storages_saved_for_backward(forward: Callable[[], object],
                                arguments: Iterable[torch.Tensor | None]) -> dict[int, int]:
    """Bytes of each storage `forward()` saves for backward, apart from the storages of its tensor `arguments`
    (which exist anyway)."""
    excluded = {t.untyped_storage().data_ptr() for t in arguments if t is not None}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return storages


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


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring's first paragraph as the description, defaults shown in --help."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_output_arguments(parser: argparse.ArgumentParser, default_out: Path) -> None:
    """`--out` (the JSON), `--quiet`, and the hidden `--command` (the command line the JSON records; default: this
    process's, `command_line`)."""
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)


def command_line(script: str, argv: list[str] | None) -> str:
    """How `script` was run (`argv`, else this process's arguments), as the results record it."""
    return " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def report(results: dict[str, Any], format_table: Callable[[dict[str, Any]], str], out: Path, quiet: bool,
           wall_s: float) -> dict[str, Any]:
    """Record the run's wall time, add its table and write it all (`write_results`); the results."""
    results["environment"]["wall_s"] = wall_s
    results["table"] = format_table(results)
    write_results(results, out, quiet)
    return results


def write_results(results: dict[str, Any], out: Path, quiet: bool) -> None:
    """Print the results' table, write the JSON to `out` and say where, so both scripts' outputs look alike."""
    if not quiet:
        print(results["table"])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(results, indent=2, default=str) + "\n")
    if not quiet:
        print(f"wrote {out} ({results['environment']['wall_s']:.0f}s)")


# ------------------------------------------------------------------------------------------- GPU accounting

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity), matched against
# torch.cuda.get_device_name in this order (more specific names first). Anything else needs --peak-tflops.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
)


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s: `override` if given, else from PEAK_BF16_TFLOPS, else None."""
    if override is not None:
        return override
    for name, tflops in PEAK_BF16_TFLOPS:
        if name in device_name:
            return tflops
    return None


def decoder_flops(config: Any, batch: int, seq: int, *, backward: bool) -> int:
    """FLOPs of a LLaMA-family decoder (config: hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, vocab_size) on `batch` sequences of `seq` tokens.

    Forward: 2 FLOPs per multiply-add of every weight matrix (q, k, v, o, gate, up, down and the LM head) per token,
    plus the attention products Q K^T and A V (2 x 2 x seq^2 x hidden per sequence and layer, not halved for the
    causal mask, as in the PaLM MFU convention). `backward`: adds the backward of a *frozen* model, which computes
    the gradients of the activations only: again 2 x weights x tokens, and twice the attention products.
    """
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv_width = hidden // config.num_attention_heads * (config.num_key_value_heads or config.num_attention_heads)
    layer_weights = 2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * config.intermediate_size
    weights = layers * layer_weights + hidden * config.vocab_size
    tokens = batch * seq
    attention = layers * batch * 4 * seq * seq * hidden
    forward = 2 * weights * tokens + attention
    return forward + (2 * weights * tokens + 2 * attention if backward else 0)


def model_flops_utilization(flops: int, seconds: float, peak: float | None) -> float | None:
    """FLOPs / (seconds x peak TFLOP/s); None without a known peak."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12)


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast around a step when the frozen model runs in that dtype (the recipes' setting on GPUs);
    a no-op context in fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def gpu_accounting(device: torch.device, peak_override: float | None) -> dict[str, Any]:
    """What the CUDA path reports next to the timings, or why it is absent."""
    if device.type != "cuda":
        return {"measured": False, "note": "not measured on a GPU (CPU run): no MFU, no CUDA peak memory"}
    name = torch.cuda.get_device_name(device)
    return {
        "measured": True,
        "device_name": name,
        "peak_bf16_tflops": peak_tflops(name, peak_override),
        "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled(),
        "mem_efficient_sdp_enabled": torch.backends.cuda.mem_efficient_sdp_enabled(),
    }
