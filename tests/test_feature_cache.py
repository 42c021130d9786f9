"""The feature cache: same loss as the online encoder, resumable, refuses another encoder, readable as a Mapping."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mm_excitor import ExcitorConfig
from mm_excitor.feature_cache import (
    FeatureCache,
    FeatureCacheError,
    FeatureCacheMismatch,
    build_feature_cache,
    discover_images,
    identity_differences,
)
from mm_excitor.methods.excitor import MultimodalExcitor
from mm_excitor.vision import VisionEncoder
from tests.tiny_models import tiny_model, tiny_tokenizer, tiny_vision_config

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red circle", "a blue square", "two green triangle", "a small yellow circle"]


def write_images(root: Path, n: int = 12) -> list[str]:
    """n small images of different sizes and colours, in two folders, PNG and JPEG; returns their keys."""
    rng = np.random.default_rng(0)
    keys = []
    for i in range(n):
        folder = "train" if i % 3 else "val"
        suffix = ".jpg" if i % 4 == 3 else ".png"
        key = f"{folder}/img_{i:02d}{suffix}"
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (24 + 4 * (i % 5), 20 + 3 * (i % 4))
        pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        pixels[..., i % 3] = 255  # a dominant colour, so that images differ a lot
        Image.fromarray(pixels).save(path)
        keys.append(key)
    return sorted(keys)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(image_root, keys, encoder, vision config dir) shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("fc")
    root = tmp / "images"
    keys = write_images(root)
    encoder = VisionEncoder(tiny_vision_config(tmp))
    return root, keys, encoder, tmp


def preprocessed(encoder, root, keys):
    images = []
    for key in keys:
        with Image.open(root / key) as image:
            images.append(encoder.preprocess(image.convert("RGB")))
    return torch.stack(images)


def caption_batch(tokenizer, captions):
    enc = tokenizer([f"describe : {c}" for c in captions], return_tensors="pt", padding=True)
    labels = enc["input_ids"].clone()
    labels[:, :2] = -100
    labels[enc["attention_mask"] == 0] = -100
    return enc["input_ids"], enc["attention_mask"], labels


def multimodal(vision=None, vision_identity=None):
    config = ExcitorConfig(num_layers=4, num_prompts=4, rank=8, visual_prompt_mode="concat")
    model = MultimodalExcitor(tiny_model(seed=0), tiny_tokenizer(), config, vision, vision_identity=vision_identity)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".gate"):
                parameter.fill_(2.0)  # past g = 0, where visual tokens would not change the loss at all
    return model.eval()


def counting(encoder, fail_at: int | None = None) -> list[int]:
    """Count the encoder's calls (batch sizes); raise at call number `fail_at` (a simulated kill)."""
    calls: list[int] = []
    forward = type(encoder).forward.__get__(encoder)

    def wrapped(images):
        calls.append(len(images))
        if len(calls) == fail_at:
            raise KeyboardInterrupt("simulated kill")
        return forward(images)

    encoder.forward = wrapped
    return calls


# ------------------------------------------------------------------------------------------------ equivalence


def test_cached_features_give_the_online_loss(setup, tmp_path):
    root, keys, encoder, tmp = setup
    cache32 = build_feature_cache(encoder, root, keys, tmp_path / "f32", batch_size=4, shard_size=4,
                                  num_workers=0, dtype="float32", progress=False)
    cache16 = build_feature_cache(encoder, root, keys, tmp_path / "f16", batch_size=4, shard_size=4,
                                  num_workers=0, dtype="float16", progress=False)
    batch_keys = keys[4:8]  # one whole shard, computed in one encoder batch of the same size
    images = preprocessed(encoder, root, batch_keys)
    torch.testing.assert_close(cache32.stack(batch_keys), encoder(images), rtol=0, atol=0)

    model = multimodal(vision=encoder)
    ids, mask, labels = caption_batch(model.tokenizer, CAPTIONS)
    with torch.no_grad():
        online = model(ids, mask, labels, images=images)
        cached = model(ids, mask, labels, visual_tokens=cache32.stack(batch_keys))
        half = model(ids, mask, labels, visual_tokens=cache16.stack(batch_keys))
        shuffled = model(ids, mask, labels, visual_tokens=cache32.stack(batch_keys[::-1]))
    assert torch.equal(online.loss, cached.loss) and torch.equal(online.logits, cached.logits)
    assert cache16.stack(batch_keys).dtype == torch.float16
    torch.testing.assert_close(half.loss, online.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(half.logits, online.logits, rtol=1e-4, atol=2e-5)
    # ... and that tolerance is far below what the visual tokens do to this (random, tiny) model's logits
    assert (shuffled.logits - online.logits).abs().max() > 1e-3

    # The training-from-cache model (no encoder, the cache's identity) gives the same loss with the same weights.
    from_cache = multimodal(vision_identity=cache32.identity)
    from_cache.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("vision.")})
    assert from_cache.vision_identity == encoder.identity()
    with torch.no_grad():
        assert torch.equal(from_cache(ids, mask, labels, visual_tokens=cache32.stack(batch_keys)).loss, online.loss)

    # An adapter trained from the cache loads on the online encoder when it is the same encoder, and only then.
    from mm_excitor import load_adapter, save_adapter

    save_adapter(from_cache, tmp_path / "adapter")
    load_adapter(multimodal(vision=encoder), tmp_path / "adapter")
    with pytest.raises(ValueError, match="vision.init_seed: adapter 0, model 1"):
        load_adapter(multimodal(vision=VisionEncoder(tiny_vision_config(tmp, init_seed=1))), tmp_path / "adapter")


# ------------------------------------------------------------------------------------------------ resume


def test_resume_after_a_kill_recomputes_only_unfinished_shards(setup, tmp_path):
    root, keys, _, tmp = setup
    reference = build_feature_cache(VisionEncoder(tiny_vision_config(tmp)), root, keys, tmp_path / "ref",
                                    batch_size=2, shard_size=4, num_workers=0, dtype="float32", progress=False)
    out = tmp_path / "cache"
    encoder = VisionEncoder(tiny_vision_config(tmp))
    calls = counting(encoder, fail_at=5)  # 3 shards x 2 batches: the kill hits shard 2's first batch
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(encoder, root, keys, out, batch_size=2, shard_size=4, num_workers=0,
                            dtype="float32", progress=False)
    assert len(calls) == 5
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cache.json", "keys.npy", "shard-00000.keys.json", "shard-00000.npy",
                     "shard-00001.keys.json", "shard-00001.npy"]  # no half-written shard, no temp file
    assert json.loads((out / "cache.json").read_text())["complete"] is False
    with pytest.raises(FeatureCacheError, match="incomplete"):
        FeatureCache(out)
    partial = FeatureCache(out, allow_incomplete=True)
    assert len(partial) == 8 and keys[8] not in partial and keys[7] in partial
    assert list(partial) == keys[:8] and torch.equal(partial[keys[7]], reference[keys[7]])
    with pytest.raises(KeyError):
        partial[keys[8]]

    encoder = VisionEncoder(tiny_vision_config(tmp))
    calls = counting(encoder)
    cache = build_feature_cache(encoder, root, keys, out, batch_size=2, shard_size=4, num_workers=0,
                                dtype="float32", progress=False)
    assert calls == [2, 2]  # shard 2 only: no finished image is recomputed
    assert cache.complete and len(cache) == 12
    for key in keys:
        assert torch.equal(cache[key], reference[key]), key

    # Resuming a complete cache computes nothing.
    assert len(build_feature_cache(encoder, root, keys, out, batch_size=2, shard_size=4, num_workers=0,
                                   dtype="float32", progress=False)) == 12
    assert calls == [2, 2]


def test_a_shard_without_its_keys_file_is_not_finished(setup, tmp_path):
    """A kill between a shard's .npy and its keys file (or inside the .npy's temp file) leaves it unfinished."""
    root, keys, _, tmp = setup
    out = tmp_path / "cache"
    encoder = VisionEncoder(tiny_vision_config(tmp))
    calls = counting(encoder, fail_at=6)  # shards 0 and 1 done, shard 2 half
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(encoder, root, keys, out, batch_size=2, shard_size=4, num_workers=0,
                            dtype="float32", progress=False)
    (out / "shard-00000.keys.json").unlink()
    (out / ".shard-00002.npy.abc.tmp").write_bytes(b"half a shard")
    calls = counting(encoder)
    cache = build_feature_cache(encoder, root, keys, out, batch_size=2, shard_size=4, num_workers=0,
                                dtype="float32", progress=False)
    assert calls == [2, 2, 2, 2]  # shards 0 and 2; shard 1 is kept
    assert not list(out.glob(".*.tmp")) and len(cache) == 12


# ------------------------------------------------------------------------------------------------ refusals


def test_a_cache_of_another_encoder_is_refused(setup, tmp_path):
    root, keys, encoder, tmp = setup
    out = tmp_path / "cache"
    cache = build_feature_cache(encoder, root, keys[:4], out, batch_size=4, shard_size=4, num_workers=0,
                                progress=False)
    other = VisionEncoder(tiny_vision_config(tmp, init_seed=1))
    with pytest.raises(FeatureCacheMismatch, match="weights_sha256: cache=") as error:
        build_feature_cache(other, root, keys[:4], out, batch_size=4, shard_size=4, num_workers=0,
                            progress=False)
    assert "another encoder" in str(error.value)
    assert any(line.startswith("weights_sha256") for line in identity_differences(cache.identity, other.identity()))
    assert identity_differences(FeatureCache(out).identity, encoder.identity()) == []  # the right one is accepted
    pooled = VisionEncoder(tiny_vision_config(tmp, token_grid=2))
    message = "; ".join(identity_differences(cache.identity, pooled.identity()))
    assert "token_grid: cache=None, given=2" in message and "num_tokens: cache=17, given=5" in message
    assert "weights_sha256" not in message
    # Same encoder, another image list: refused too (it would mix two caches in one directory).
    with pytest.raises(FeatureCacheError, match="another num_keys"):
        build_feature_cache(encoder, root, keys[:5], out, batch_size=4, shard_size=4, num_workers=0,
                            progress=False)


def test_missing_and_corrupt_images_are_named(setup, tmp_path):
    root, keys, encoder, tmp = setup
    calls = counting(VisionEncoder(tiny_vision_config(tmp)))
    with pytest.raises(FeatureCacheError, match=r"not found: .*nowhere/missing\.png"):
        build_feature_cache(encoder, root, [*keys[:3], "nowhere/missing.png"], tmp_path / "a", num_workers=0,
                            progress=False)
    assert not calls and not (tmp_path / "a" / "shard-00000.npy").exists()
    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    (bad_root / "broken.png").write_bytes(b"this is not a png")
    Image.new("RGB", (8, 8)).save(bad_root / "good.png")
    with pytest.raises(FeatureCacheError, match=r"broken\.png"):  # raised in a DataLoader worker
        build_feature_cache(encoder, bad_root, ["good.png", "broken.png"], tmp_path / "b", num_workers=2,
                            progress=False)
    with pytest.raises(ValueError, match="relative"):
        build_feature_cache(encoder, root, ["../escape.png"], tmp_path / "c", progress=False)


def truncate(path: Path, by: int = 10) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - by)


DAMAGES = {  # what is done to a cache, what the error says, whether rerunning the build repairs it
    "truncated shard": (lambda out: truncate(out / "shard-00001.npy"),
                        r"shard-00001\.npy has \d+ bytes where \(5, 17, 48\) float32 needs \d+ \(truncated\?\)", True),
    "missing shard": (lambda out: (out / "shard-00001.npy").unlink(), r"shard-00001\.npy is missing", True),
    "shard of another shape": (lambda out: np.save(out / "shard-00000.npy", np.zeros((5, 17, 4), np.float32)),
                               r"shard-00000\.npy holds \(5, 17, 4\) float32, expected \(5, 17, 48\)", True),
    "edited key list": (lambda out: np.save(out / "keys.npy", np.sort(np.load(out / "keys.npy"))[::-1].copy()),
                        r"keys\.npy: its keys' sha256 is not the manifest's", True),
    "truncated key list": (lambda out: truncate(out / "keys.npy"), r"keys\.npy has \d+ bytes", True),
    "corrupt manifest": (lambda out: (out / "cache.json").write_text('{"format": "mm_excitor.feature_'),
                         r"cache\.json: not valid JSON", False),
    "manifest without a field": (
        lambda out: (out / "cache.json").write_text(json.dumps(
            {k: v for k, v in json.loads((out / "cache.json").read_text()).items() if k != "num_keys"})),
        r"cache\.json: field 'num_keys' missing", False),
    "old format": (lambda out: (out / "cache.json").write_text('{"format": "mm_excitor.feature_cache/1"}'),
                   r"format 'mm_excitor.feature_cache/1', this version reads 'mm_excitor.feature_cache/2'", False),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_cache_is_refused_naming_the_file_and_the_build_repairs_it(setup, tmp_path, damage):
    root, keys, _, tmp = setup
    out = tmp_path / "cache"
    build_feature_cache(VisionEncoder(tiny_vision_config(tmp)), root, keys, out, batch_size=4, shard_size=5,
                        num_workers=0, dtype="float32", progress=False)
    original = {p.name: p.read_bytes() for p in out.iterdir()}
    damage_fn, message, repairable = DAMAGES[damage]
    damage_fn(out)
    with pytest.raises(FeatureCacheError, match=message) as error:
        FeatureCache(out)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)  # the entry points' one-line error
    encoder = VisionEncoder(tiny_vision_config(tmp))
    calls = counting(encoder)
    if not repairable:
        with pytest.raises(FeatureCacheError, match=message):
            build_feature_cache(encoder, root, keys, out, batch_size=4, shard_size=5, num_workers=0,
                                dtype="float32", progress=False)
        return
    build_feature_cache(encoder, root, keys, out, batch_size=4, shard_size=5, num_workers=0, dtype="float32",
                        progress=False)
    assert sum(calls) == (5 if "shard" in damage else 0)  # only the damaged shard is computed again
    assert {p.name: p.read_bytes() for p in out.iterdir()} == original


def test_a_missing_cache_is_named(tmp_path):
    with pytest.raises(FeatureCacheError, match=f"no feature cache at {tmp_path / 'nowhere'}: not a directory"):
        FeatureCache(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureCacheError, match=r"missing cache\.json\); build one with"):
        FeatureCache(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ reading


def test_cache_is_a_mapping_that_dataloader_workers_read(setup, tmp_path):
    from data.coco import CaptionSample
    from data.collate import Collator
    from tasks.caption import CaptionTrainDataset

    root, keys, encoder, _ = setup
    cache = build_feature_cache(encoder, root, keys, tmp_path / "cache", batch_size=4, shard_size=5,
                                num_workers=0, progress=False)
    assert isinstance(cache, Mapping)
    assert len(cache) == 12 and cache.keys() == keys and list(cache) == keys
    assert keys[0] in cache and "nope.png" not in cache and 3 not in cache
    with pytest.raises(KeyError, match="nope.png"):
        cache["nope.png"]
    value = cache[keys[-1]]
    assert value.shape == (encoder.num_tokens, encoder.width) and value.dtype == torch.float16
    value += 1  # a copy: the cache is unchanged (and the memory map is read-only)
    assert not torch.equal(value, cache[keys[-1]])
    assert cache.identity == encoder.identity() and cache.num_tokens == 17 and cache.width == 48

    blob = pickle.dumps(cache)
    assert len(blob) < 4000 and b"img_00" not in blob  # no key index, no memory maps, no open files
    clone = pickle.loads(blob)
    assert torch.equal(clone[keys[7]], cache[keys[7]]) and clone.keys() == keys
    maps = Path("/proc/self/maps")
    if maps.exists():  # features are read with positioned reads, never memory-mapped (RSS stays flat)
        assert ".npy" in maps.read_text() and "shard-" not in maps.read_text()  # (keys.npy is mapped)

    samples = [CaptionSample(root / k, k, i, CAPTIONS[i % 4]) for i, k in enumerate(keys)]
    dataset = CaptionTrainDataset(samples, visual_features=cache)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=Collator(tiny_tokenizer(), 32))
    seen = []
    for batch in loader:
        batch_keys = [m["image_key"] for m in batch.meta]
        assert torch.equal(batch.inputs["visual_tokens"], cache.stack(batch_keys))
        seen += batch_keys
    assert seen == keys


def test_keys_are_binary_searched_as_utf8_bytes(setup, tmp_path):
    root, _, encoder, _ = setup
    names = ["z.png", "a/b.png", "a.png", "\u00e9/\u00fc.png", "\u00e4.png", "\u65e5\u672c.png", "a b.png", "a-c.png"]
    for i, name in enumerate(names):
        (tmp_path / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + i, 20), (30 * i, 0, 255 - 30 * i)).save(tmp_path / "img" / name)
    cache = build_feature_cache(encoder, tmp_path / "img", names, tmp_path / "cache", batch_size=8,
                                shard_size=3, num_workers=0, dtype="float32", progress=False)
    assert list(cache) == sorted(names) and len(cache) == len(names)
    torch.testing.assert_close(cache.stack(names), encoder(preprocessed(encoder, tmp_path / "img", names)),
                               rtol=1e-5, atol=1e-5)
    for absent in ["", "a", "a/b.pn", "a/b.png ", "zz.png", "\u00e9", "x" * 1000, "\udcff.png", 3, None, b"a.png"]:
        assert absent not in cache
    with pytest.raises(KeyError, match="zz.png"):
        cache["zz.png"]
    with pytest.raises(ValueError, match="not valid UTF-8"):
        build_feature_cache(encoder, tmp_path / "img", ["\udcff.png"], tmp_path / "bad", progress=False)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_builds_a_cache(setup, tmp_path):
    root, keys, encoder, tmp = setup
    assert discover_images(root) == keys
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "mm_excitor.feature_cache", "--image-root", str(root), "--out", str(out),
               "--model-name", "TinyTestViT", "--model-config-file", str(tmp / "TinyTestViT.json"),
               "--batch-size", "3", "--shard-size", "5", "--num-workers", "0", "--dtype", "float32",
               "--no-progress"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 12 and summary["num_tokens"] == 17
    cache = FeatureCache(out)
    assert identity_differences(cache.identity, encoder.identity()) == []
    assert cache.keys() == keys and sorted(p.name for p in out.glob("shard-*.npy")) == [
        "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    images = preprocessed(encoder, root, keys[:2])
    torch.testing.assert_close(cache.stack(keys[:2]), encoder(images), rtol=1e-5, atol=1e-5)


def write_checkpoint(path: Path, config, seed: int) -> Path:
    """An open_clip checkpoint (safetensors) of the tiny CLIP, random weights drawn with `seed`."""
    import open_clip
    from safetensors.torch import save_file

    open_clip.add_model_config(config.model_config_file)
    torch.manual_seed(seed)
    clip = open_clip.create_model(config.model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path


def test_the_config_check_compares_the_weights_not_just_the_name(setup, tmp_path, monkeypatch):
    from mm_excitor.factory import ModelConfig
    from mm_excitor.factory import check_cache_matches_config

    root, keys, encoder, tmp = setup
    check = lambda cache, **vision: check_cache_matches_config(  # noqa: E731
        cache.identity, ModelConfig(vision=tiny_vision_config(tmp, **vision)))
    seed0 = build_feature_cache(encoder, root, keys[:4], tmp_path / "seed0", num_workers=0, progress=False)
    # Two checkpoints with the same basename (the way every open_clip download is named) and other weights.
    file_a = write_checkpoint(tmp_path / "a" / "open_clip_model.safetensors", tiny_vision_config(tmp), seed=11)
    file_b = write_checkpoint(tmp_path / "b" / "open_clip_model.safetensors", tiny_vision_config(tmp), seed=12)
    from_a = build_feature_cache(VisionEncoder(tiny_vision_config(tmp, pretrained=str(file_a))), root, keys[:4],
                                 tmp_path / "from_a", num_workers=0, progress=False)

    # The config check never builds the encoder: it hashes the checkpoint file instead (~1 s for ViT-L/14).
    monkeypatch.setattr(VisionEncoder, "__init__", lambda *a, **k: pytest.fail("the check built an encoder"))
    check(seed0)
    with pytest.raises(FeatureCacheMismatch, match="init_seed: cache=0, config=1"):
        check(seed0, init_seed=1)
    check(from_a, pretrained=str(file_a))
    moved = tmp_path / "elsewhere" / "renamed.safetensors"
    moved.parent.mkdir()
    moved.write_bytes(file_a.read_bytes())
    check(from_a, pretrained=str(moved))  # the same bytes at another path are the same encoder
    with pytest.raises(FeatureCacheMismatch, match="checkpoint_sha256: cache='[0-9a-f]{64}', config='[0-9a-f]{64}'") \
            as error:
        check(from_a, pretrained=str(file_b))
    assert str(file_b) in str(error.value)
    with pytest.raises(FeatureCacheMismatch, match="checkpoint_sha256: cache=None") as error:
        check(seed0, pretrained=str(file_a))
    assert "init_seed: cache=0, config=None" in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        check(from_a, pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(FeatureCacheMismatch, match="token_grid: cache=None, config=2"):
        check(seed0, token_grid=2)
    # Another architecture registered under the same name (a model-config file with 3 layers instead of 2).
    other = json.loads(Path(tiny_vision_config(tmp).model_config_file).read_text())
    other["vision_cfg"]["layers"] = 3
    (tmp_path / "deeper").mkdir()
    (tmp_path / "deeper" / "TinyTestViT.json").write_text(json.dumps(other))
    deeper = dataclasses.replace(tiny_vision_config(tmp), model_config_file=str(tmp_path / "deeper" / "TinyTestViT.json"))
    with pytest.raises(FeatureCacheMismatch, match="model_config_sha256"):
        check_cache_matches_config(seed0.identity, ModelConfig(vision=deeper))
    with pytest.raises(FeatureCacheMismatch, match="model_name: cache='TinyTestViT', config='ViT-L-14-quickgelu'"):
        check_cache_matches_config(seed0.identity, ModelConfig())


def test_the_identity_records_the_checkpoint_bytes_and_the_init_seed(setup, tmp_path):
    """One identity: the config's fields (what the check compares) are the built encoder's, plus its weights."""
    from mm_excitor.vision import config_identity

    _, _, encoder, tmp = setup
    path = write_checkpoint(tmp_path / "clip.safetensors", tiny_vision_config(tmp), seed=3)
    loaded = VisionEncoder(tiny_vision_config(tmp, pretrained=str(path)))
    assert loaded.identity()["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.identity()["init_seed"] is None and encoder.identity()["init_seed"] == 0
    assert encoder.identity()["checkpoint_sha256"] is None
    for built in (encoder, loaded):
        fields = config_identity(built.config)
        assert {k: built.identity()[k] for k in fields} == fields
    # A random init of another seed really is another encoder, and its weights hash says so too.
    assert VisionEncoder(tiny_vision_config(tmp, init_seed=1)).identity()["weights_sha256"] != \
        encoder.identity()["weights_sha256"]
