"""A feature cache: the frozen encoder's visual tokens for a list of images, precomputed once to sharded files.

    python -m mm_excitor.feature_cache --image-root coco/images --out cache/vitl14 \\
        --model-name ViT-L-14-quickgelu --pretrained ckpt/open_clip_pytorch_model.bin [--list keys.txt]

CLIP is frozen, so its tokens are a pure function of the image: train and evaluate from the cache instead of
running the encoder every step. Layout of a cache directory:

- ``cache.json``: the manifest, written (atomically) before the first shard and updated when the last one is
  done: format, the encoder's ``identity()`` (model, checkpoint sha256 or init seed, weights hash, preprocessing,
  token layout), dtype, N_v, D, shard size, number of keys, sha256 of the key list, ``complete``.
- ``keys.npy``: the keys, image paths relative to the image root (POSIX, UTF-8), sorted, unique, as a
  fixed-width bytes array: readers memory-map it and binary-search it, so no process holds a per-image index.
- ``shard-00000.npy`` (n x N_v x D, keys[i*S:(i+1)*S]) and ``shard-00000.keys.json`` (its keys). The shard's
  ``.npy`` is written first, the ``.keys.json`` last, each through a temporary file and ``os.replace``: a shard
  counts as done exactly when its keys file is there, so a killed build resumes at the first unfinished shard
  and never recomputes a finished one. Shard assignment is a function of the sorted key list alone.

``FeatureCache(path)`` reads it as a ``Mapping[str, Tensor]`` (what the ``data`` datasets take as
``visual_features``): one positioned read (``os.preadv``) per item, no memory map of the features, so a reader's
memory does not grow with the cache it reads. It checks the manifest, the key list and every shard's size when
opened (a damaged cache is a ``FeatureCacheError``, a ``ValueError`` naming the file) and pickles without its open
files (DataLoader workers reopen them). A cache made by another encoder is refused: by ``build_feature_cache``
when it would resume it (``identity_differences``), and by ``factory.create_model`` when a run would train or
evaluate from it with another encoder than its config names.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .cli import run_cli
from .images import ImageReadError, open_rgb
from .io import atomic_write_bytes, atomic_write_json, fsync_dir

if TYPE_CHECKING:  # open_clip is slow to import: readers (DataLoader workers) never need it
    from .vision import VisionEncoder

logger = logging.getLogger(__name__)

FORMAT = "mm_excitor.feature_cache/2"
MANIFEST = "cache.json"
KEYS_FILE = "keys.npy"
DTYPES = {"float16": np.float16, "float32": np.float32}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MANIFEST_FIELDS = {"format": str, "identity": dict, "dtype": str, "num_tokens": int, "width": int,
                   "shard_size": int, "num_keys": int, "num_shards": int, "keys_sha256": str, "complete": bool}


class FeatureCacheError(ValueError):
    """A cache that cannot be built or read as asked (bad image, missing or damaged file, other key list...).

    A ValueError: bad input, which the entry points report as one line (mm_excitor.cli.run_cli)."""


class FeatureCacheMismatch(FeatureCacheError):
    """A cache made by another encoder (or preprocessing, or token layout) than the one it is used with."""


# ---------------------------------------------------------------------------------------------------- helpers


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def normalize_keys(keys: Sequence[str]) -> list[str]:
    """Sorted, unique POSIX paths relative to the image root; absolute paths, '..', backslashes are refused.

    Keys are stored as UTF-8 bytes and binary-searched in that order, which is the order of ``sorted`` on str."""
    out = set()
    for key in keys:
        key = str(key)
        if not key or any(c in key for c in "\n\\\x00"):
            raise ValueError(f"bad image key {key!r}: keys are POSIX paths relative to the image root")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"bad image key {key!r}: not valid UTF-8 (rename the file)") from None
        path = PurePosixPath(key)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"bad image key {key!r}: keys are paths relative to the image root, without '..'")
        out.add(str(path))
    return sorted(out)


def keys_sha256(keys: Sequence[str]) -> str:
    """sha256 of the keys, each followed by a newline, in UTF-8 (what ``sha256sum`` says of a key list file)."""
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


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the cache in `directory`, checked field by field; FeatureCacheError names what is wrong."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise FeatureCacheError(f"no feature cache at {directory}: not a directory")
    if not path.is_file():
        raise FeatureCacheError(f"no feature cache at {directory} (missing {MANIFEST}); build one with "
                                f"`python -m mm_excitor.feature_cache --image-root ... --out {directory}`")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FeatureCacheError(f"{path}: not valid JSON ({error}): the cache is damaged") from None
    if not isinstance(manifest, dict):
        raise FeatureCacheError(f"{path}: not a feature cache manifest (a JSON object): the cache is damaged")
    if manifest.get("format") != FORMAT:
        raise FeatureCacheError(f"{path}: format {manifest.get('format')!r}, this version reads {FORMAT!r}: build "
                                "the cache again (python -m mm_excitor.feature_cache) into a new directory")
    for field, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(field), kind):
            raise FeatureCacheError(f"{path}: field {field!r} missing or not a {kind.__name__}: the cache is damaged")
    if manifest["dtype"] not in DTYPES:
        raise FeatureCacheError(f"{path}: dtype {manifest['dtype']!r} is not one of {sorted(DTYPES)}")
    return manifest


def _check_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype | None = None) -> tuple[int, np.dtype]:
    """(data offset, dtype) of `path` if it is a whole C-order .npy of this shape (and dtype, when given), judged
    from its header and size alone; else FeatureCacheError saying what is wrong."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy version {version} is not supported")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            found_shape, fortran_order, found_dtype = read_header(handle)
            offset, size = handle.tell(), os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise FeatureCacheError(f"{path} is missing: the cache is damaged") from None
    except (OSError, ValueError) as error:
        raise FeatureCacheError(f"{path} is not a readable .npy file ({error}): the cache is damaged") from None
    dtype = found_dtype if dtype is None else dtype
    if tuple(found_shape) != shape or found_dtype != dtype or fortran_order:
        raise FeatureCacheError(f"{path} holds {tuple(found_shape)} {found_dtype}, expected {shape} {dtype}: the "
                                "cache is damaged")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if size != expected:
        raise FeatureCacheError(f"{path} has {size} bytes where {shape} {dtype} needs {expected} (truncated?): the "
                                "cache is damaged")
    return offset, dtype


def _check_key_file(directory: Path, manifest: dict[str, Any]) -> np.dtype:
    """The dtype of a keys.npy that holds the manifest's key list (count and sha256); else FeatureCacheError.

    Streams the file (no memory map, no per-key list), so opening a cache costs no memory per image."""
    path = Path(directory) / KEYS_FILE
    offset, dtype = _check_npy(path, (manifest["num_keys"],))
    if dtype.kind != "S":
        raise FeatureCacheError(f"{path} holds {dtype}, not byte strings: the cache is damaged")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        for _ in range(0, manifest["num_keys"], 65536):
            digest.update(b"".join(k + b"\n" for k in np.fromfile(handle, dtype, count=65536).tolist()))
    if digest.hexdigest() != manifest["keys_sha256"]:
        raise FeatureCacheError(f"{path}: its keys' sha256 is not the manifest's: the cache is damaged")
    return dtype


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
    """A read-only ``Mapping[image key -> Tensor N_v x D]`` over a cache directory.

    ``cache[key]`` binary-searches the memory-mapped key list and reads the row with one ``os.preadv`` into a new
    tensor (in the stored dtype; the model's projection casts it). An incomplete cache (a build that was killed)
    is refused unless ``allow_incomplete=True``, which exposes the finished shards only.
    """

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        if not self.manifest["complete"] and not allow_incomplete:
            raise FeatureCacheError(
                f"feature cache {self.path} is incomplete (its build was interrupted): run the same "
                f"`python -m mm_excitor.feature_cache` command again to finish it"
            )
        shards = range(self.manifest["num_shards"])
        if not self.complete:  # allow_incomplete: the finished shards only
            shards = [i for i in shards if (self.path / f"{shard_name(i)}.keys.json").is_file()]
        self._shard_size: int = self.manifest["shard_size"]
        self._row_shape = (self.num_tokens, self.width)
        self._dtype = np.dtype(DTYPES[self.manifest["dtype"]])
        self._row_bytes = self.num_tokens * self.width * self._dtype.itemsize
        self._offsets: dict[int, int] = {}  # shard -> byte offset of its data, for every readable shard
        try:
            self._key_width = _check_key_file(self.path, self.manifest).itemsize
            for shard in shards:
                self._offsets[shard] = _check_npy(self.path / f"{shard_name(shard)}.npy",
                                                  (self._rows(shard), *self._row_shape), self._dtype)[0]
        except FeatureCacheError as error:
            raise FeatureCacheError(f"{error}; run the `python -m mm_excitor.feature_cache` command that built "
                                    "it again to recompute what is damaged") from None
        self._len = sum(self._rows(shard) for shard in self._offsets)
        self._keys: np.ndarray | None = None  # memory-mapped on first use, in each process
        self._files: dict[int, BinaryIO] = {}  # open shard files (closed when collected) and their descriptors
        self._fds: dict[int, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickles small: no memory map, no open files; both are reopened lazily by the receiving process."""
        return {**self.__dict__, "_keys": None, "_files": {}, "_fds": {}}

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
        return self._shard_size

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    # -- keys
    def _rows(self, shard: int) -> int:
        return min(self._shard_size, self.manifest["num_keys"] - shard * self._shard_size)

    def _key_array(self) -> np.ndarray:
        if self._keys is None:
            self._keys = np.load(self.path / KEYS_FILE, mmap_mode="r", allow_pickle=False).view(np.ndarray)
        return self._keys

    def _position(self, key: object) -> int | None:
        """The key's row in the cache (binary search of the sorted key bytes), None if absent or unfinished."""
        if not isinstance(key, str):
            return None
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError:
            return None
        if not encoded or len(encoded) > self._key_width:
            return None
        keys = self._key_array() if self._keys is None else self._keys
        position = int(keys.searchsorted(encoded))
        if position == len(keys) or keys[position] != encoded:
            return None
        return position if position // self._shard_size in self._offsets else None

    def keys(self) -> list[str]:  # noqa: D102 - a list, in cache (sorted) order
        return list(self)

    def __iter__(self) -> Iterator[str]:
        keys = self._key_array()
        for shard in self._offsets:
            start = shard * self._shard_size
            for raw in keys[start:start + self._rows(shard)].tolist():
                yield raw.decode("utf-8")

    def __len__(self) -> int:
        return self._len

    def __contains__(self, key: object) -> bool:
        return self._position(key) is not None

    # -- the data
    def __getitem__(self, key: str) -> torch.Tensor:
        position = self._position(key)
        if position is None:
            raise KeyError(f"{key!r} is not in feature cache {self.path} ({len(self)} images)")
        shard, row = divmod(position, self._shard_size)
        fd = self._fds.get(shard)
        if fd is None:
            handle = self._files[shard] = open(self.path / f"{shard_name(shard)}.npy", "rb", buffering=0)
            fd = self._fds[shard] = handle.fileno()
        out = np.empty(self._row_shape, self._dtype)
        if os.preadv(fd, (out,), self._offsets[shard] + row * self._row_bytes) != self._row_bytes:
            raise FeatureCacheError(f"{self.path / shard_name(shard)}.npy: row {row} is cut short (the file shrank "
                                    "after the cache was opened): the cache is damaged")
        return torch.from_numpy(out)

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
        path = self.image_root / self.keys[position]
        try:
            rgb = open_rgb(path)
        except ImageReadError as error:
            raise FeatureCacheError(f"{path} (key {self.keys[position]!r}): {error}") from None
        return position, self.preprocess(rgb)


class _ShardBatches(Sampler):
    """Batches of positions that never cross a shard boundary, for the given (unfinished) shards only; made as
    they are drawn, not held."""

    def __init__(self, shards: list[int], num_keys: int, shard_size: int, batch_size: int) -> None:
        self.shards, self.num_keys, self.shard_size, self.batch_size = shards, num_keys, shard_size, batch_size

    def _bounds(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_keys))

    def __iter__(self) -> Iterator[list[int]]:
        for shard in self.shards:
            rows = self._bounds(shard)
            for start in range(rows.start, rows.stop, self.batch_size):
                yield list(range(start, min(start + self.batch_size, rows.stop)))

    def __len__(self) -> int:
        return sum(-(-len(self._bounds(shard)) // self.batch_size) for shard in self.shards)


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


def _key_file_bytes(keys: list[str]) -> bytes:
    encoded = [k.encode("utf-8") for k in keys]
    buffer = io.BytesIO()
    np.save(buffer, np.array(encoded, dtype=f"S{max(map(len, encoded))}"), allow_pickle=False)
    return buffer.getvalue()


def _shard_done(out_dir: Path, shard: int, keys: list[str], shape: tuple[int, ...], dtype: str) -> bool:
    """A shard is done when its keys file lists exactly its keys and its .npy is whole (header and size)."""
    keys_path = out_dir / f"{shard_name(shard)}.keys.json"
    try:
        _check_npy(out_dir / f"{shard_name(shard)}.npy", shape, np.dtype(DTYPES[dtype]))
        return json.loads(keys_path.read_text()) == keys
    except (OSError, ValueError):  # FeatureCacheError included
        return False


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

    Resumes a killed build of the same encoder, keys, shard size and dtype, skipping finished shards (and
    recomputes any shard, or key file, found damaged); refuses an existing cache that differs in any of those
    (FeatureCacheMismatch for another encoder), saying what differs.
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

    complete = False
    if manifest_path.exists():
        existing = read_manifest(out_dir)
        differences = identity_differences(existing["identity"], identity)
        if differences:
            raise FeatureCacheMismatch(
                f"{out_dir} holds a feature cache made by another encoder; differing fields: "
                + "; ".join(differences) + ". Use another --out directory (or delete this one)."
            )
        for field in ("dtype", "shard_size", "num_keys", "keys_sha256"):
            if existing[field] != manifest[field]:
                raise FeatureCacheError(
                    f"{out_dir} holds a feature cache with another {field} ({existing[field]!r}, now "
                    f"{manifest[field]!r}); a cache is resumed only with the same image list, shard size and "
                    "dtype. Use another --out directory (or delete this one)."
                )
        complete = existing["complete"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".shard-*.tmp"):  # left by a killed writer: never a finished file
        stale.unlink(missing_ok=True)

    n_tokens, width = identity["num_tokens"], identity["width"]
    num_shards = manifest["num_shards"]

    def shard_keys(shard: int) -> list[str]:
        return keys[shard * shard_size:(shard + 1) * shard_size]

    todo = [s for s in range(num_shards)
            if not _shard_done(out_dir, s, shard_keys(s), (len(shard_keys(s)), n_tokens, width), dtype)]
    try:
        _check_key_file(out_dir, manifest)
        keys_ok = True
    except FeatureCacheError:
        keys_ok = False
    if complete and not todo and keys_ok:
        logger.info("feature cache %s is already complete", out_dir)
        return FeatureCache(out_dir)
    if complete or not manifest_path.exists():
        atomic_write_json(manifest_path, manifest)  # not complete until every shard below is
    if not keys_ok:
        atomic_write_bytes(out_dir / KEYS_FILE, _key_file_bytes(keys))
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
        description="Precompute a frozen open_clip encoder's visual tokens for a list of images into a sharded "
                    "feature cache (atomic writes; a killed build resumes where it stopped; a cache of another "
                    "encoder is refused). Train from it with data.feature_cache=OUT and the same encoder settings "
                    "in model.vision. Bad input ends with one 'error: ...' line and exit status 2.",
    )
    parser.add_argument("--image-root", type=Path, required=True,
                        help="directory the image keys are relative to (the training config's data.image_root)")
    parser.add_argument("--list", type=Path, default=None,
                        help="file with one image path (relative to --image-root) per line; default: every "
                             "*.jpg/*.jpeg/*.png under --image-root")
    parser.add_argument("--out", type=Path, required=True,
                        help="cache directory: created, or resumed when it holds an interrupted build of the same "
                             "encoder, images, shard size and dtype (damaged shards are computed again)")
    parser.add_argument("--model-name", default=defaults.model_name,
                        help="open_clip model name, as model.vision.model_name (default: %(default)s)")
    parser.add_argument("--pretrained", default=None,
                        help="local CLIP checkpoint file, as model.vision.pretrained; the sha256 of its bytes "
                             "identifies the encoder (default: none, a random-init encoder)")
    parser.add_argument("--model-config-file", default=None,
                        help="open_clip model-config JSON to register first, for a model open_clip does not ship "
                             "(as model.vision.model_config_file)")
    parser.add_argument("--token-grid", type=int, default=None,
                        help="average-pool the patch tokens to a GxG grid (+ CLS), as model.vision.token_grid "
                             "(default: every token)")
    parser.add_argument("--init-seed", type=int, default=defaults.init_seed,
                        help="seed of a random-init encoder, as model.vision.init_seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder batch (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard file (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=2,
                        help="DataLoader workers decoding images (default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="stored dtype (default: %(default)s; float32 if features overflow it)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def pin_malloc_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at its default (128 KiB) for the rest of the process (elsewhere: nothing).

    glibc raises the threshold when a large block is freed, so after the encoder's first batch its activations
    come from a heap that fragments, and the CLI's peak RSS grows with the number of images it encodes
    (docs/design.md, "Measured numbers behind library defaults"). The CLI owns its process; a library caller
    decides for its own (or sets MALLOC_MMAP_THRESHOLD_=131072).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD from malloc.h


def main(argv: list[str] | None = None) -> FeatureCache:
    from .vision import VisionConfig, VisionEncoder

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pin_malloc_mmap_threshold()
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
    sys.exit(run_cli(main, sys.argv[1:]))
