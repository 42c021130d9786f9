"""The feature cache at scale: bounded memory, exact resume after a kill, DataLoader reads at in-memory speed.

    .venv/bin/python experiments/feature_cache_scale.py          # 20,000 images; JSON to experiments/results/feature_cache_scale.json

Synthetic PNG images (32 px, random pixels) are cached with a tiny random-init open_clip ViT (32 px, 4 px patches,
one layer of width 64: 65 tokens x 64, float16, 8,320 bytes per image), so that the run measures the cache and
not the encoder. Each build (the `python -m mm_excitor.feature_cache` command's `main`) and each memory
measurement runs in its own subprocess:

- **bounded memory**: the same build and the same read (one epoch over every key in random order through a
  DataLoader with `--workers` workers) for `--small-images` and for `--images` images. Peak RSS of the process
  (`ru_maxrss`: resident anonymous *and* file-backed pages, memory maps included) and of its largest DataLoader
  worker (`VmHWM` from /proc, sampled while the workers live; Linux only); the growth from the small to the large run is compared with the large cache's size.
- **resume after a kill**: a build of all images is SIGKILLed (its whole process group, workers included) once
  half of its shards are finished, then the same command runs again. The result must equal a one-shot build
  byte for byte (every file), the shards finished before the kill must be untouched (same inode and mtime), and
  the rerun must encode exactly the images of the unfinished shards.
- **read throughput**: items/s of one epoch over every key in random order, `cache[key]` vs `tensor[i]` for a
  torch tensor holding the same features in memory (loaded from the shard files with NumPy, not through the
  cache), same DataLoader settings and order, epochs interleaved (cache, memory, cache, ...) after a warm-up
  epoch; medians reported. A first, untimed epoch checks that both give equal batches.

The defaults take about 3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from bench.timing import argument_parser, command_line, report, runtime_environment  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "feature_cache_scale.json"
ENCODER_NAME = "ScaleBenchViT"
RSS_GROWTH_LIMIT = 0.2  # peak RSS may grow by at most this fraction of the large cache's bytes (was 1.46 at 22482dc)
THROUGHPUT_LIMIT = 1.5  # in-memory items/s over cache items/s


def encoder_config(args: argparse.Namespace, scratch: Path):
    from mm_excitor.vision import VisionConfig

    path = scratch / f"{ENCODER_NAME}.json"
    path.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": args.image_size, "layers": 1, "width": 64, "patch_size": 4, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }))
    return VisionConfig(model_name=ENCODER_NAME, model_config_file=str(path), init_seed=args.seed)


def write_images(root: Path, count: int, size: int, seed: int) -> list[str]:
    """`count` random-pixel PNGs, 1,000 per folder; returns their keys (sorted)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    keys = [f"part{i // 1000:03d}/img_{i:06d}.png" for i in range(count)]
    for key in keys:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return keys


def peak_rss() -> int:
    """Peak resident bytes of this process (ru_maxrss: Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def children_peak_rss() -> int:
    """The largest peak resident bytes (VmHWM) among this process's live children: its DataLoader workers."""
    me, peak = str(os.getpid()), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] != me:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError):
            continue  # a process that ended meanwhile
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


def cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for children (DataLoader workers count once they exit)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Rows(torch.utils.data.Dataset):
    """source[index[i]]: a cache read by key or an in-memory tensor read by position, behind one interface."""

    def __init__(self, source, index) -> None:
        self.source, self.index = source, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.source[self.index[i]]


def random_order(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def loader(dataset: Rows, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=args.read_batch, sampler=random_order(len(dataset), args.seed),
                                       num_workers=args.workers)


# ---------------------------------------------------------------------------------------------------- children


def child_build(args: argparse.Namespace) -> dict[str, Any]:
    """The build as users run it: `python -m mm_excitor.feature_cache` (its main), encoder calls counted."""
    from mm_excitor import feature_cache
    from mm_excitor.vision import VisionEncoder

    config = encoder_config(args, args.scratch)
    encoded, workers_peak = [], [0]
    forward = VisionEncoder.forward

    def counting_forward(self: VisionEncoder, images: torch.Tensor) -> torch.Tensor:
        encoded.append(len(images))
        workers_peak[0] = max(workers_peak[0], children_peak_rss())  # VmHWM only grows: the last call sees it
        return forward(self, images)

    VisionEncoder.forward = counting_forward
    rss_before = peak_rss()
    start = time.perf_counter()
    feature_cache.main([
        "--image-root", str(args.scratch / "images"), "--list", str(args.list), "--out", str(args.cache),
        "--model-name", config.model_name, "--model-config-file", config.model_config_file,
        "--init-seed", str(config.init_seed), "--batch-size", str(args.build_batch),
        "--shard-size", str(args.shard_size), "--num-workers", str(args.workers), "--dtype", "float16",
        "--device", "cpu", "--no-progress"])
    return {"images": len(feature_cache.read_key_list(args.list)), "images_encoded": sum(encoded),
            "seconds": time.perf_counter() - start, "peak_rss_before_build_bytes": rss_before,
            "peak_rss_bytes": peak_rss(), "workers_peak_rss_bytes": workers_peak[0]}


def child_read(args: argparse.Namespace) -> dict[str, Any]:
    from mm_excitor.feature_cache import FeatureCache

    cache = FeatureCache(args.cache)
    keys = list(cache)  # the dataset's own key list (a training set holds its samples the same way)
    rss_before = peak_rss()
    start, total, workers_peak = time.perf_counter(), 0.0, 0
    batches = loader(Rows(cache, keys), args)
    iterator = iter(batches)
    for index in range(len(batches)):
        total += float(next(iterator)[:, 0, 0].float().sum())
        if index % 32 == 0 or index == len(batches) - 1:  # the workers are alive until the iterator ends
            workers_peak = max(workers_peak, children_peak_rss())
    del iterator
    return {"images": len(keys), "seconds": time.perf_counter() - start, "checksum": total,
            "peak_rss_before_read_bytes": rss_before, "peak_rss_bytes": peak_rss(),
            "workers_peak_rss_bytes": workers_peak}


def run_child(args: argparse.Namespace, phase: str, cache: Path, key_list: Path | None = None,
              kill_at_shard: int | None = None) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; with kill_at_shard, SIGKILL it (and its workers) once that shard's
    keys file exists and return what the kill left behind."""
    command = [sys.executable, __file__, "--child", phase, "--scratch", str(args.scratch), "--cache", str(cache),
               "--seed", str(args.seed), "--image-size", str(args.image_size), "--workers", str(args.workers),
               "--threads", str(args.threads), "--build-batch", str(args.build_batch),
               "--shard-size", str(args.shard_size), "--read-batch", str(args.read_batch)]
    if key_list is not None:
        command += ["--list", str(key_list)]
    if kill_at_shard is None:
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(f"{phase} child failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
                               start_new_session=True)
    marker = cache / f"shard-{kill_at_shard:05d}.keys.json"
    while not marker.exists():
        if process.poll() is not None:
            raise SystemExit(f"the build to be killed ended first ({process.returncode}): "
                             f"{process.stderr.read()[-4000:]}")
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    return {"killed_with": "SIGKILL to the process group", "returncode": process.returncode}


# ---------------------------------------------------------------------------------------------------- benchmark


def finished_shards(cache: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file of the finished shards (those whose keys file exists)."""
    out = {}
    for keys_file in sorted(cache.glob("shard-*.keys.json")):
        for path in (keys_file, cache / keys_file.name.replace(".keys.json", ".npy")):
            stat = path.stat()
            out[path.name] = (stat.st_ino, stat.st_mtime_ns)
    return out


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / name).read_bytes() == (b / name).read_bytes() for name in names)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def measure_throughput(args: argparse.Namespace, cache_dir: Path, log) -> dict[str, Any]:
    from mm_excitor.feature_cache import FeatureCache

    cache = FeatureCache(cache_dir)
    keys = list(cache)
    shards = sorted(cache_dir.glob("shard-*.npy"))
    memory = torch.from_numpy(np.concatenate([np.load(path, allow_pickle=False) for path in shards]))
    if memory.shape[0] != len(keys):
        raise SystemExit(f"the shards hold {memory.shape[0]} rows for {len(keys)} keys")
    sides = {"cache": Rows(cache, keys), "in_memory": Rows(memory, range(len(keys)))}
    order = random_order(len(keys), args.seed)
    for batch_cache, batch_memory in zip(loader(sides["cache"], args), loader(sides["in_memory"], args)):
        if not torch.equal(batch_cache, batch_memory):
            raise SystemExit("the cache and the in-memory array gave different batches")
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(args.warmup + args.repeats):
        for name, dataset in sides.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            for _ in loader(dataset, args):
                pass
            if round_index >= args.warmup:
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(cpu_seconds() - start_cpu)
    result = {name: {"median_s": statistics.median(s), "samples_s": s, "items_per_s": len(keys) / statistics.median(s),
                     "cpu_median_s": statistics.median(cpu[name]), "cpu_samples_s": cpu[name]}
              for name, s in seconds.items()}
    result["ratio_in_memory_over_cache"] = result["in_memory"]["items_per_s"] / result["cache"]["items_per_s"]
    result["cpu_ratio_cache_over_in_memory"] = result["cache"]["cpu_median_s"] / result["in_memory"]["cpu_median_s"]
    # What one item costs by itself, without workers: process CPU time of a random-order pass of __getitem__.
    per_item = {}
    for name, dataset in sides.items():
        samples = []
        for _ in range(args.repeats):
            start = time.process_time()
            for i in order:
                dataset[i]
            samples.append(time.process_time() - start)
        per_item[name] = statistics.median(samples) / len(keys) * 1e6
    result["getitem_cpu_us"] = per_item
    log(f"read throughput: cache {result['cache']['items_per_s']:.0f} items/s, in memory "
        f"{result['in_memory']['items_per_s']:.0f} items/s (ratio {result['ratio_in_memory_over_cache']:.2f}; "
        f"CPU time of all processes, cache / memory: {result['cpu_ratio_cache_over_in_memory']:.2f})")
    return {"items": len(keys), "batch_size": args.read_batch, "workers": args.workers, "order": "random",
            "warmup_epochs": args.warmup, "epochs": args.repeats, **result}


def run(args: argparse.Namespace, log) -> dict[str, Any]:
    scratch = args.scratch
    start = time.perf_counter()
    keys = write_images(scratch / "images", args.images, args.image_size, args.seed)
    log(f"wrote {len(keys)} PNG images in {time.perf_counter() - start:.1f}s")
    lists = {"small": scratch / "small.txt", "large": scratch / "large.txt"}
    lists["small"].write_text("".join(k + "\n" for k in keys[:args.small_images]))
    lists["large"].write_text("".join(k + "\n" for k in keys))

    memory: dict[str, Any] = {}
    for size in ("small", "large"):
        build = run_child(args, "build", scratch / f"cache-{size}", lists[size])
        read = run_child(args, "read", scratch / f"cache-{size}")
        memory[size] = {"images": build["images"], "cache_bytes": directory_bytes(scratch / f"cache-{size}"),
                        "build": build, "read": read}
        log(f"{size}: {build['images']} images built in {build['seconds']:.1f}s "
            f"({build['images'] / build['seconds']:.0f} images/s), peak RSS build "
            f"{build['peak_rss_bytes'] / 2**20:.0f} MiB (workers {build['workers_peak_rss_bytes'] / 2**20:.0f}), "
            f"read {read['peak_rss_bytes'] / 2**20:.0f} MiB (workers {read['workers_peak_rss_bytes'] / 2**20:.0f})")
    cache_bytes = memory["large"]["cache_bytes"]
    growth = {f"{phase}_{who}": memory["large"][phase][key] - memory["small"][phase][key]
              for phase in ("build", "read")
              for who, key in (("main", "peak_rss_bytes"), ("workers", "workers_peak_rss_bytes"))}
    memory["peak_rss_growth_bytes"] = growth
    memory["peak_rss_growth_over_cache_bytes"] = {k: v / cache_bytes for k, v in growth.items()}
    log("peak RSS growth small -> large, as a fraction of the large cache's "
        f"{cache_bytes / 2**20:.0f} MiB: " + ", ".join(f"{k} {v:+.3f}" for k, v in
                                                        memory["peak_rss_growth_over_cache_bytes"].items()))

    reference = scratch / "cache-large"
    resumed = scratch / "cache-resumed"
    num_shards = -(-args.images // args.shard_size)
    kill_at = num_shards // 2
    killed = run_child(args, "build", resumed, lists["large"], kill_at_shard=kill_at)
    before = finished_shards(resumed)
    left = sorted(p.name for p in resumed.iterdir() if p.name.startswith("."))
    done_images = sum(min(args.shard_size, args.images - int(name[6:11]) * args.shard_size)
                      for name in before if name.endswith(".npy"))
    rerun = run_child(args, "build", resumed, lists["large"])
    after = finished_shards(resumed)
    resume = {
        **killed, "kill_when_finished_shard": kill_at, "num_shards": num_shards,
        "shards_finished_at_kill": len(before) // 2, "temporary_files_left_by_kill": left,
        "images_done_at_kill": done_images, "images_encoded_by_rerun": rerun["images_encoded"],
        "rerun_encoded_only_unfinished_shards": rerun["images_encoded"] == args.images - done_images,
        "finished_shards_untouched": all(after.get(name) == stamp for name, stamp in before.items()),
        "equal_to_one_shot_build_bytewise": same_files(resumed, reference),
        "rerun_seconds": rerun["seconds"],
    }
    log(f"resume: killed with {resume['shards_finished_at_kill']}/{num_shards} shards finished, rerun encoded "
        f"{resume['images_encoded_by_rerun']} images, finished shards untouched: "
        f"{resume['finished_shards_untouched']}, byte-identical to a one-shot build: "
        f"{resume['equal_to_one_shot_build_bytewise']}")

    throughput = measure_throughput(args, reference, log)
    targets = {
        f"peak_rss_growth_{name}_le_{RSS_GROWTH_LIMIT}_of_cache": value <= RSS_GROWTH_LIMIT
        for name, value in memory["peak_rss_growth_over_cache_bytes"].items()
    }
    targets.update(
        resume_equal_to_one_shot=resume["equal_to_one_shot_build_bytewise"],
        resume_no_shard_written_twice=resume["finished_shards_untouched"]
        and resume["rerun_encoded_only_unfinished_shards"],
        read_throughput_within_1_5x_of_memory=throughput["ratio_in_memory_over_cache"] <= THROUGHPUT_LIMIT,
    )
    return {"memory": memory, "resume": resume, "throughput": throughput, "targets_met": targets,
            "wall_s": time.perf_counter() - start}


def format_table(results: dict[str, Any]) -> str:
    memory, resume, throughput = results["memory"], results["resume"], results["throughput"]
    mib = 2**20
    rows = ["| images | cache MiB | build peak RSS MiB (largest worker) | read peak RSS MiB (largest worker) |",
            "| --- | --- | --- | --- |"]
    for size in ("small", "large"):
        m = memory[size]
        rows.append(f"| {m['images']:,} | {m['cache_bytes'] / mib:.0f} | {m['build']['peak_rss_bytes'] / mib:.0f} "
                    f"({m['build']['workers_peak_rss_bytes'] / mib:.0f}) | {m['read']['peak_rss_bytes'] / mib:.0f} "
                    f"({m['read']['workers_peak_rss_bytes'] / mib:.0f}) |")
    growth = ", ".join(f"{k} {v * 100:+.1f}%" for k, v in memory["peak_rss_growth_over_cache_bytes"].items())
    env = results["environment"]
    rows += [
        "",
        f"Peak RSS growth from {memory['small']['images']:,} to {memory['large']['images']:,} images, in % of the "
        f"large cache's size: {growth}.",
        f"Resume: SIGKILL with {resume['shards_finished_at_kill']}/{resume['num_shards']} shards finished; the "
        f"rerun encoded {resume['images_encoded_by_rerun']:,} images (the unfinished shards'), finished shards "
        f"untouched: {resume['finished_shards_untouched']}, byte-identical to a one-shot build: "
        f"{resume['equal_to_one_shot_build_bytewise']}.",
        f"Read, {throughput['items']:,} keys in random order, DataLoader batch {throughput['batch_size']}, "
        f"{throughput['workers']} workers: cache {throughput['cache']['items_per_s']:,.0f} items/s, in-memory "
        f"tensor {throughput['in_memory']['items_per_s']:,.0f} items/s, ratio "
        f"**{throughput['ratio_in_memory_over_cache']:.2f}** (memory / cache; median of {throughput['epochs']} "
        f"interleaved epochs; CPU time of all processes, cache / memory: "
        f"{throughput['cpu_ratio_cache_over_in_memory']:.2f}). One `__getitem__` by itself: cache "
        f"{throughput['getitem_cpu_us']['cache']:.1f} us, in-memory tensor {throughput['getitem_cpu_us']['in_memory']:.1f} "
        f"us (CPU time). torch {env['torch']}, {env['device_name']}, {env['cpu_count']} cores, shared.",
    ]
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument("--images", type=int, default=20000, help="images of the large run")
    parser.add_argument("--small-images", type=int, default=2000, help="images of the small run (memory growth)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--build-batch", type=int, default=256, help="encoder batch of the builds")
    parser.add_argument("--read-batch", type=int, default=16,
                        help="DataLoader batch of the reads (16: the COCO recipe's per-GPU micro-batch)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (builds and reads)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per side before the timed ones")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per side")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scratch", type=Path, default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--child", choices=("build", "read"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--list", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.small_images < args.images:
        parser.error("need 0 < --small-images < --images")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child is not None:
        print(json.dumps((child_build if args.child == "build" else child_read)(args)))
        return {}
    log = (lambda *a: print("[feature_cache_scale]", *a, flush=True)) if not args.quiet else (lambda *a: None)
    command = command_line("experiments/feature_cache_scale.py", argv)
    with tempfile.TemporaryDirectory(prefix="fc_scale_") as default_scratch:
        args.scratch = args.scratch or Path(default_scratch)
        args.scratch.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {"environment": {
            **runtime_environment(torch.device("cpu")), "command": command, "images": args.images,
            "small_images": args.small_images, "image_size": args.image_size, "shard_size": args.shard_size,
            "build_batch": args.build_batch, "dtype": "float16", "encoder": f"random-init {ENCODER_NAME} "
            f"({args.image_size} px, 4 px patches, 1 layer, width 64: 65 tokens x 64)",
            "peak_rss": "ru_maxrss of each subprocess (anonymous + file-backed resident pages) and the largest "
                        "VmHWM among its DataLoader workers (/proc, sampled while they live)",
        }}
        results.update(run(args, log))
    return report(results, format_table, args.out, args.quiet, results.pop("wall_s"))


if __name__ == "__main__":
    main()
