"""What checking a feature cache against a config costs: hash the checkpoint file vs build the encoder.

    .venv/bin/python experiments/vision_identity_cost.py          # JSON to experiments/results/vision_identity_cost.json

A random-init open_clip model (default ViT-L-14-quickgelu, nothing is downloaded) is saved as an open_clip
safetensors checkpoint in a temporary directory (by a subprocess, so that this process's peak RSS is its own
work), then timed once each, in this order: `config_identity` (the
sha256 of the file's bytes: what `check_cache_matches_config` computes), building `VisionEncoder` from the file
(what checking by weights would need first), and `identity()` on the built encoder (config identity + a hash
of the built weights: what an online run records). Peak RSS of this process is reported after each step. The
file was just written, so it is read from the page cache (a cold read adds the disk's time to both sides).
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from bench.timing import command_line, runtime_environment, write_results  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "vision_identity_cost.json"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(steps: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run fn; record its wall and process CPU seconds (the CPU time is what a shared machine leaves steady)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    steps[f"{name}_s"], steps[f"{name}_cpu_s"] = time.perf_counter() - start, time.process_time() - start_cpu
    return out


def write_checkpoint(model_name: str, path: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = open_clip.create_model(model_name)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mm_excitor.vision import VisionConfig, VisionEncoder, config_identity

    steps: dict[str, Any] = {"peak_rss_before_mib": peak_rss_mib()}
    with tempfile.TemporaryDirectory(prefix="identity_cost_", dir=args.tmp) as scratch:
        path = Path(scratch) / "open_clip_model.safetensors"
        subprocess.run([sys.executable, __file__, "--model-name", args.model_name, "--write-checkpoint", str(path)],
                       check=True)
        config = VisionConfig(model_name=args.model_name, pretrained=str(path))
        steps["checkpoint_bytes"] = path.stat().st_size
        timed(steps, "config_identity", lambda: config_identity(config))
        steps["peak_rss_after_config_identity_mib"] = peak_rss_mib()
        encoder = timed(steps, "build_encoder", lambda: VisionEncoder(config))
        steps["peak_rss_after_build_mib"] = peak_rss_mib()
        timed(steps, "built_identity", encoder.identity)
        steps["encoder_parameters"] = sum(p.numel() for p in encoder.parameters())
    steps["cpu_ratio_build_over_config_identity"] = steps["build_encoder_cpu_s"] / steps["config_identity_cpu_s"]
    return steps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-name", default="ViT-L-14-quickgelu")
    parser.add_argument("--tmp", default=None, help="where the temporary checkpoint goes (default: the system's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--write-checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.write_checkpoint is not None:
        write_checkpoint(args.model_name, args.write_checkpoint)
        return {}
    start = time.perf_counter()
    steps = run(args)
    command = command_line("experiments/vision_identity_cost.py", argv)
    results = {"environment": {**runtime_environment(torch.device("cpu")), "command": command,
                               "model_name": args.model_name, "wall_s": time.perf_counter() - start},
               **steps}
    results["table"] = (
        f"{args.model_name} ({steps['encoder_parameters'] / 1e6:.0f}M encoder parameters, "
        f"{steps['checkpoint_bytes'] / 1e9:.2f} GB checkpoint), peak RSS {steps['peak_rss_before_mib']:.0f} MiB "
        f"after imports; seconds wall (CPU): config identity (file sha256) {steps['config_identity_s']:.2f} "
        f"({steps['config_identity_cpu_s']:.2f}), peak RSS {steps['peak_rss_after_config_identity_mib']:.0f} MiB; "
        f"building the encoder {steps['build_encoder_s']:.2f} ({steps['build_encoder_cpu_s']:.2f}), peak RSS "
        f"{steps['peak_rss_after_build_mib']:.0f} MiB; identity() of the built encoder (file and weights hashes) "
        f"{steps['built_identity_s']:.2f} ({steps['built_identity_cpu_s']:.2f}).")
    write_results(results, args.out, args.quiet)
    return results


if __name__ == "__main__":
    main()
