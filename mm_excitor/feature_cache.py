"""A feature cache: the frozen encoder's visual tokens for a list of images, precomputed once to sharded files.

    python -m mm_excitor.feature_cache --image-root coco/images --out cache/vitl14 \
        --model-name ViT-L-14-quickgelu --pretrained ckpt/ViT-L-14.pt [--list keys.txt] [--token-grid 8]

CLIP is frozen, so its tokens are a pure function of the image: train and evaluate from the cache instead of
running the encoder every step. Layout of a cache directory:

- ``cache.json``: the manifest, written (atomically) before the first shard and updated when the last one is
  done: format, the encoder's ``identity()`` (model, weights hash, preprocessing, token layout), dtype, N_v, D,
  shard size, number of keys, sha256 of the key list, ``complete``.
- ``keys.txt``: the keys, one per line: image paths relative to the image root (POSIX), sorted, unique.
- ``shard-00000.npy`` (n x N_v x D, keys[i*S:(i+1)*S]) and ``shard-00000.keys.json`` (its keys). The shard's
  ``.npy`` is written first, the ``.keys.json`` last, each through a temporary file and ``os.replace``: a shard
  counts as done exactly when its keys file is there, so a killed build resumes at the first unfinished shard
  and never recomputes a finished one. Shard assignment is a function of the sorted key list alone.

``FeatureCache(path)`` reads it as a ``Mapping[str, Tensor]`` (what the ``data`` datasets take as
``visual_features``), memory-mapping each shard when it is first touched. It pickles without its memory maps or
key index (DataLoader workers reopen them lazily). A cache made by another encoder is refused: by
``build_feature_cache`` when it would resume it, and by ``FeatureCache.check_identity`` /
``FeatureCache(path, expected_identity=...)`` when it would be used.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .io import atomic_write_bytes, atomic_write_json, fsync_dir

if TYPE_CHECKING:  # open_clip is slow to import: readers (DataLoader workers) never need it
    from .vision import VisionEncoder

logger = logging.getLogger(__name__)

FORMAT = "mm_excitor.feature_cache/1"
MANIFEST = "cache.json"
KEYS_FILE = "keys.txt"
DTYPES = {"float16": np.float16, "float32": np.float32}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class FeatureCacheError(RuntimeError):
    """A cache that cannot be built or read as asked (bad image, missing shard, different key list...)."""


class FeatureCacheMismatch(FeatureCacheError):
    """A cache made by another encoder (or preprocessing, or token layout) than the one it is used with."""


# ---------------------------------------------------------------------------------------------------- helpers


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def normalize_keys(keys: Sequence[str]) -> list[str]:
    """Sorted, unique POSIX paths relative to the image root; absolute paths, '..', backslashes are refused."""
    out = set()
    for key in keys:
        key = str(key)
        if not key or "\n" in key or "\\" in key:
            raise ValueError(f"bad image key {key!r}: keys are POSIX paths relative to the image root")
        path = PurePosixPath(key)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"bad image key {key!r}: keys are paths relative to the image root, without '..'")
        out.add(str(path))
    return sorted(out)


def keys_sha256(keys: Sequence[str]) -> str:
    return hashlib.sha256("".join(k + "\n" for k in keys).encode()).hexdigest()


def discover_images(image_root: Path) -> list[str]:
    """Every *.jpg / *.jpeg / *.png (any case) under image_root, as sorted keys."""
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise FileNotFoundError(f"image root is not a directory: {image_root}")
    keys = [p.relative_to(image_root).as_posix() for p in image_root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(keys)


def read_key_list(path: Path) -> list[str]:
    """A list file: one key per line; blank lines and lines starting with '#' are ignored."""
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def identity_differences(cached: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """'field: cache=..., given=...' for every (dotted) field in which two encoder identities differ."""
    a, b = _flatten(json.loads(json.dumps(cached))), _flatten(json.loads(json.dumps(other)))
    missing = object()
    return [f"{key}: cache={a.get(key, '<absent>')!r}, given={b.get(key, '<absent>')!r}"
            for key in sorted(set(a) | set(b)) if a.get(key, missing) != b.get(key, missing)]


class _ShardWriter:
    """Fills one shard's .npy through a memory-mapped temporary file; os.replace once every row is written."""

    def __init__(self, out_dir: Path, shard: int, shape: tuple[int, ...], dtype: str) -> None:
        self.shard = shard
        self.path = out_dir / f"{shard_name(shard)}.npy"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        self.tmp = Path(tmp)
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=DTYPES[dtype], shape=shape)
        self.remaining = shape[0]

    def write(self, rows: np.ndarray, values: np.ndarray) -> bool:
        """Write rows; True (and the shard file is in place) when the shard is full."""
        self.array[rows] = values
        self.remaining -= len(rows)
        if self.remaining > 0:
            return False
        self.array.flush()
        del self.array
        with open(self.tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return True

    def abort(self) -> None:
        self.__dict__.pop("array", None)
        self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- reading


class FeatureCache(Mapping):
    """A read-only ``Mapping[image key -> Tensor N_v x D]`` over a cache directory, memory-mapped shard by shard.

    ``cache[key]`` returns a copy (a tensor that owns its memory) in the stored dtype; the model's projection
    casts it. An incomplete cache (a build that was killed) is refused unless ``allow_incomplete=True``, which
    exposes the finished shards only.
    """

    def __init__(self, path: str | Path, *, expected_identity: dict[str, Any] | None = None,
                 allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FeatureCacheError(f"no feature cache at {self.path} (missing {MANIFEST}); build one with "
                                    f"`python -m mm_excitor.feature_cache --image-root ... --out {self.path}`")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise FeatureCacheError(f"{manifest_path}: unknown format {self.manifest.get('format')!r}, "
                                    f"expected {FORMAT!r}")
        self.allow_incomplete = allow_incomplete
        if not self.manifest["complete"] and not allow_incomplete:
            raise FeatureCacheError(
                f"feature cache {self.path} is incomplete (its build was interrupted): run the same "
                f"`python -m mm_excitor.feature_cache` command again to finish it"
            )
        if expected_identity is not None:
            self.check_identity(expected_identity)
        self._keys: list[str] | None = None
        self._index: dict[str, int] | None = None
        self._shards: dict[int, np.ndarray] = {}

    # -- cheap pickling: no memory maps, no key index; both are rebuilt lazily in the receiving process
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_keys=None, _index=None, _shards={})
        return state

    # -- metadata
    @property
    def identity(self) -> dict[str, Any]:
        """The ``VisionEncoder.identity()`` of the encoder that made these features."""
        return json.loads(json.dumps(self.manifest["identity"]))

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def width(self) -> int:
        return int(self.manifest["width"])

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.manifest["dtype"])

    @property
    def shard_size(self) -> int:
        return int(self.manifest["shard_size"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def check_identity(self, identity: dict[str, Any]) -> None:
        """Raise FeatureCacheMismatch, listing the differing fields, unless `identity` is the cache's encoder's."""
        differences = identity_differences(self.manifest["identity"], identity)
        if differences:
            raise FeatureCacheMismatch(
                f"feature cache {self.path} was made by another encoder than the one given; differing fields: "
                + "; ".join(differences)
            )

    # -- the key index
    def _load_keys(self) -> None:
        all_keys = (self.path / KEYS_FILE).read_text().splitlines()
        if len(all_keys) != self.manifest["num_keys"] or keys_sha256(all_keys) != self.manifest["keys_sha256"]:
            raise FeatureCacheError(f"{self.path / KEYS_FILE} does not match the manifest's key list "
                                    "(number of keys or sha256 differ): the cache is damaged")
        index = {k: i for i, k in enumerate(all_keys)}
        if not self.complete:  # allow_incomplete: the finished shards only
            size = self.shard_size
            done = {i for i in range(self.manifest["num_shards"])
                    if (self.path / f"{shard_name(i)}.keys.json").is_file()}
            index = {k: i for k, i in index.items() if i // size in done}
        self._keys = list(index)
        self._index = index

    @property
    def index(self) -> dict[str, int]:
        if self._index is None:
            self._load_keys()
        return self._index

    def keys(self):  # noqa: D102 - a list, in cache (sorted) order
        if self._keys is None:
            self._load_keys()
        return list(self._keys)

    def __iter__(self) -> Iterator[str]:
        if self._keys is None:
            self._load_keys()
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    # -- the data
    def _shard(self, index: int) -> np.ndarray:
        shard = self._shards.get(index)
        if shard is None:
            path = self.path / f"{shard_name(index)}.npy"
            try:
                shard = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise FeatureCacheError(f"feature cache shard missing: {path}") from None
            start = index * self.shard_size
            rows = min(self.shard_size, self.manifest["num_keys"] - start)
            expected = (rows, self.num_tokens, self.width)
            if shard.shape != expected or shard.dtype != np.dtype(self.manifest["dtype"]):
                raise FeatureCacheError(f"{path}: shape {shard.shape} / dtype {shard.dtype}, the manifest says "
                                        f"{expected} / {self.manifest['dtype']}: the cache is damaged")
            self._shards[index] = shard
        return shard

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            position = self.index[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in feature cache {self.path} ({len(self)} images)") from None
        shard, row = divmod(position, self.shard_size)
        return torch.from_numpy(np.array(self._shard(shard)[row]))

    def stack(self, keys: Sequence[str]) -> torch.Tensor:
        """B x N_v x D for a list of keys."""
        return torch.stack([self[k] for k in keys])

    def __repr__(self) -> str:
        return (f"FeatureCache({str(self.path)!r}, {self.manifest['num_keys']} images, "
                f"{self.num_tokens}x{self.width} {self.manifest['dtype']}, "
                f"encoder {self.manifest['identity'].get('model_name')})")


# ---------------------------------------------------------------------------------------------------- building


class _ImageFiles(Dataset):
    """(position, preprocessed image) for keys under image_root; a bad file raises an error that names it."""

    def __init__(self, image_root: Path, keys: list[str], preprocess) -> None:
        self.image_root = image_root
        self.keys = keys
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor]:
        from PIL import Image

        path = self.image_root / self.keys[position]
        try:
            with Image.open(path) as image:
                image.load()
                rgb = image.convert("RGB")
        except FileNotFoundError:
            raise FeatureCacheError(f"image file not found: {path} (key {self.keys[position]!r})") from None
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise FeatureCacheError(f"cannot read image {path} (key {self.keys[position]!r}): {error}") from None
        return position, self.preprocess(rgb)


class _ShardBatches(Sampler):
    """Batches of positions that never cross a shard boundary, for the given (unfinished) shards only."""

    def __init__(self, shards: list[int], num_keys: int, shard_size: int, batch_size: int) -> None:
        self.batches = []
        for shard in shards:
            stop = min((shard + 1) * shard_size, num_keys)
            for start in range(shard * shard_size, stop, batch_size):
                self.batches.append(list(range(start, min(start + batch_size, stop))))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _manifest(identity, dtype: str, keys: list[str], shard_size: int, complete: bool) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "identity": identity,
        "dtype": dtype,
        "num_tokens": identity["num_tokens"],
        "width": identity["width"],
        "shard_size": shard_size,
        "num_keys": len(keys),
        "num_shards": -(-len(keys) // shard_size),
        "keys_sha256": keys_sha256(keys),
        "complete": complete,
    }


def _shard_done(out_dir: Path, shard: int, keys: list[str], shape: tuple[int, ...], dtype: str) -> bool:
    """A shard is done when its keys file lists exactly its keys and its .npy has the right header."""
    keys_path = out_dir / f"{shard_name(shard)}.keys.json"
    if not keys_path.is_file():
        return False
    try:
        if json.loads(keys_path.read_text()) != keys:
            return False
        array = np.load(out_dir / f"{shard_name(shard)}.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return array.shape == shape and array.dtype == np.dtype(dtype)


def build_feature_cache(
    encoder: "VisionEncoder",
    image_root: str | Path,
    keys: Sequence[str],
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    shard_size: int = 1024,
    num_workers: int = 2,
    dtype: str = "float16",
    progress: bool = True,
) -> FeatureCache:
    """Compute `encoder`'s tokens for every key (image path relative to image_root) into `out_dir`.

    Resumes a killed build of the same encoder, keys, shard size and dtype, skipping finished shards; refuses an
    existing cache that differs in any of those (FeatureCacheMismatch for another encoder), saying what differs.
    """
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be >= 1")
    image_root, out_dir = Path(image_root), Path(out_dir)
    keys = normalize_keys(keys)
    if not keys:
        raise ValueError("no images to cache (empty key list)")
    identity = encoder.identity()
    manifest = _manifest(identity, dtype, keys, shard_size, complete=False)
    manifest_path = out_dir / MANIFEST

    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        differences = identity_differences(existing.get("identity", {}), identity)
        if differences:
            raise FeatureCacheMismatch(
                f"{out_dir} holds a feature cache made by another encoder; differing fields: "
                + "; ".join(differences) + ". Use another --out directory (or delete this one)."
            )
        for field in ("format", "dtype", "shard_size", "num_keys", "keys_sha256"):
            if existing.get(field) != manifest[field]:
                raise FeatureCacheError(
                    f"{out_dir} holds a feature cache with another {field} ({existing.get(field)!r}, now "
                    f"{manifest[field]!r}); a cache is resumed only with the same image list, shard size and "
                    "dtype. Use another --out directory (or delete this one)."
                )
        if existing.get("complete"):
            logger.info("feature cache %s is already complete", out_dir)
            return FeatureCache(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".shard-*.tmp"):  # left by a killed writer: never a finished file
        stale.unlink(missing_ok=True)
    if not manifest_path.is_file():
        atomic_write_bytes(out_dir / KEYS_FILE, "".join(k + "\n" for k in keys).encode())
        atomic_write_json(manifest_path, manifest)

    n_tokens, width = identity["num_tokens"], identity["width"]
    num_shards = manifest["num_shards"]

    def shard_keys(shard: int) -> list[str]:
        return keys[shard * shard_size:(shard + 1) * shard_size]

    todo = [s for s in range(num_shards)
            if not _shard_done(out_dir, s, shard_keys(s), (len(shard_keys(s)), n_tokens, width), dtype)]
    done_images = len(keys) - sum(len(shard_keys(s)) for s in todo)
    if todo:
        missing = [k for s in todo for k in shard_keys(s) if not (image_root / k).is_file()]
        if missing:
            shown = ", ".join(str(image_root / k) for k in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FeatureCacheError(f"{len(missing)} image file(s) not found: {shown}{more}")
        logger.info("feature cache %s: %d/%d shards to compute (%d images already done)",
                    out_dir, len(todo), num_shards, done_images)
        loader = DataLoader(
            _ImageFiles(image_root, keys, encoder.preprocess),
            batch_sampler=_ShardBatches(todo, len(keys), shard_size, batch_size),
            num_workers=num_workers,
            pin_memory=False,
        )
        device = next(encoder.parameters()).device
        bar = tqdm(total=len(keys), initial=done_images, unit="img", desc=f"caching {identity['model_name']}",
                   disable=not progress, dynamic_ncols=True)
        writer: _ShardWriter | None = None
        try:
            for positions, images in loader:
                shard = int(positions[0]) // shard_size
                if writer is None or writer.shard != shard:
                    writer = _ShardWriter(out_dir, shard, (len(shard_keys(shard)), n_tokens, width), dtype)
                tokens = encoder(images.to(device)).float()
                if tuple(tokens.shape[1:]) != (n_tokens, width):
                    raise FeatureCacheError(f"encoder returned {tuple(tokens.shape)}, identity says N x D = "
                                            f"{(n_tokens, width)}")
                values = tokens.cpu().numpy().astype(DTYPES[dtype])
                if not np.isfinite(values).all():
                    raise FeatureCacheError(f"non-finite features in shard {shard} as {dtype} (overflow? use "
                                            "--dtype float32)")
                if writer.write(positions.numpy() - shard * shard_size, values):
                    atomic_write_json(out_dir / f"{shard_name(shard)}.keys.json", shard_keys(shard))
                    writer = None
                bar.update(len(values))
        finally:
            bar.close()
            if writer is not None:
                writer.abort()
    manifest["complete"] = True
    atomic_write_json(manifest_path, manifest)
    return FeatureCache(out_dir)


# ---------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .vision import VisionConfig

    defaults = VisionConfig()
    parser = argparse.ArgumentParser(
        prog="python -m mm_excitor.feature_cache",
        description="Precompute a frozen open_clip encoder's visual tokens for a list of images into a sharded, "
                    "memory-mapped feature cache (resumable; refuses a cache of another encoder).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--image-root", type=Path, required=True, help="directory the image keys are relative to")
    parser.add_argument("--list", type=Path, default=None,
                        help="file with one image path (relative to --image-root) per line; default: every "
                             "*.jpg/*.jpeg/*.png under --image-root")
    parser.add_argument("--out", type=Path, required=True, help="cache directory (created, or resumed)")
    parser.add_argument("--model-name", default=defaults.model_name)
    parser.add_argument("--pretrained", default=None, help="local open_clip/OpenAI checkpoint; none: random init")
    parser.add_argument("--model-config-file", default=None, help="open_clip model-config JSON to register first")
    parser.add_argument("--token-grid", type=int, default=None, help="pool patch tokens to a GxG grid (+ CLS)")
    parser.add_argument("--init-seed", type=int, default=defaults.init_seed, help="seed of a random-init encoder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding images")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> FeatureCache:
    from .vision import VisionConfig, VisionEncoder

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keys = read_key_list(args.list) if args.list is not None else discover_images(args.image_root)
    config = VisionConfig(model_name=args.model_name, pretrained=args.pretrained,
                          model_config_file=args.model_config_file, token_grid=args.token_grid,
                          init_seed=args.init_seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = VisionEncoder(config).to(device)
    cache = build_feature_cache(encoder, args.image_root, keys, args.out, batch_size=args.batch_size,
                                shard_size=args.shard_size, num_workers=args.num_workers, dtype=args.dtype,
                                progress=not args.no_progress)
    print(json.dumps({"cache": str(cache.path), "images": len(cache), "num_tokens": cache.num_tokens,
                      "width": cache.width, "dtype": cache.manifest["dtype"],
                      "identity": cache.identity}, indent=2))
    return cache


if __name__ == "__main__":
    try:
        main()
    except (FeatureCacheError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
