"""A missing or damaged feature cache ends the entry points with one `error: ...` line and exit status 2.

The module CLI and train_caption.py run through their `__main__` blocks in this process (runpy: the same lines,
without paying for another interpreter start); the module CLI once in a subprocess too.
"""
from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mm_excitor.feature_cache import build_feature_cache, discover_images
from mm_excitor.vision import VisionConfig, VisionEncoder
from tests.tiny_models import TINY_ASSETS_CLIP, write_tiny_assets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny assets and a feature cache of their shapes images made by the encoder their config names."""
    root = write_tiny_assets(tmp_path_factory.mktemp("assets"))
    images = root / "shapes" / "coco" / "images"
    encoder = VisionEncoder(vision_config(root))
    build_feature_cache(encoder, images, discover_images(images), root / "cache", batch_size=16, shard_size=16,
                        num_workers=0, progress=False)
    return root


def vision_config(assets: Path) -> VisionConfig:
    return VisionConfig(model_name=TINY_ASSETS_CLIP, model_config_file=str(assets / f"{TINY_ASSETS_CLIP}.json"))


def caption_args(assets: Path, cache: Path, out: Path) -> list[str]:
    coco = assets / "shapes" / "coco"
    return [f"model.language_model={assets / 'lm'}", f"model.vision.model_name={TINY_ASSETS_CLIP}",
            f"model.vision.model_config_file={assets / (TINY_ASSETS_CLIP + '.json')}",
            "model.excitor.num_layers=2", "model.excitor.num_prompts=4", "model.excitor.rank=4",
            f"data.train_annotations={coco / 'dataset_coco.json'}", f"data.image_root={coco / 'images'}",
            f"data.feature_cache={cache}", "data.max_length=32", f"train.output_dir={out}", "train.max_steps=1",
            "train.device=cpu", "train.num_workers=0", "train.progress_bar=false", "train.tensorboard=false",
            "evaluate=false"]


def damaged(assets: Path, tmp_path: Path, damage: str) -> Path:
    cache = tmp_path / "cache"
    if damage == "missing cache":
        return cache
    shutil.copytree(assets / "cache", cache)
    if damage == "truncated shard":
        shard = cache / "shard-00001.npy"
        with open(shard, "r+b") as handle:
            handle.truncate(shard.stat().st_size - 100)
    else:
        (cache / "cache.json").write_text('{"format": ')
    return cache


EXPECTED = {"missing cache": "no feature cache at {cache}: not a directory",
            "truncated shard": "{cache}/shard-00001.npy has ",
            "corrupt manifest": "{cache}/cache.json: not valid JSON"}


def one_error_line(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], stderr


def run_main(monkeypatch, capsys, argv: list[str], module: str | None = None, path: Path | None = None):
    """Run an entry point's `__main__` block in this process; (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        if module is not None:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(path), run_name="__main__")
    return exit_.value.code, capsys.readouterr().err


def test_the_undamaged_cache_is_accepted_by_the_training_path(assets):
    from mm_excitor import ExcitorConfig
    from mm_excitor.factory import ModelConfig
    from mm_excitor.factory import create_model
    from mm_excitor.feature_cache import FeatureCache

    excitor = ExcitorConfig(num_layers=2, num_prompts=4, rank=4, visual_prompt_mode="concat")
    features = FeatureCache(assets / "cache")
    model = create_model(
        ModelConfig(language_model=str(assets / "lm"), excitor=excitor, vision=vision_config(assets)),
        feature_cache=features)
    assert model.vision is None and len(features) == 40 and model.vision_identity == features.identity


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # runpy: the module was imported before
@pytest.mark.parametrize("damage", sorted(EXPECTED))
def test_train_caption_reports_a_bad_cache_in_one_line(assets, tmp_path, monkeypatch, capsys, damage):
    cache = damaged(assets, tmp_path, damage)
    status, stderr = run_main(monkeypatch, capsys, ["train_caption.py", *caption_args(assets, cache, tmp_path / "run")],
                              path=REPO / "train_caption.py")
    assert status == 2
    one_error_line(stderr, EXPECTED[damage].format(cache=cache))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_cache_cli_reports_bad_input_in_one_line(assets, tmp_path, monkeypatch, capsys):
    images = assets / "shapes" / "coco" / "images"
    common = ["--model-name", TINY_ASSETS_CLIP, "--model-config-file", str(assets / f"{TINY_ASSETS_CLIP}.json"),
              "--batch-size", "16", "--shard-size", "16", "--num-workers", "0", "--no-progress"]
    cli = ["python -m mm_excitor.feature_cache"]
    cache = damaged(assets, tmp_path / "corrupt", "corrupt manifest")
    status, stderr = run_main(monkeypatch, capsys, cli + ["--image-root", str(images), "--out", str(cache), *common],
                              module="mm_excitor.feature_cache")
    assert status == 2
    one_error_line(stderr, f"{cache}/cache.json: not valid JSON")
    status, stderr = run_main(monkeypatch, capsys, cli + ["--image-root", str(tmp_path / "nowhere"), "--out",
                                                          str(tmp_path / "new"), *common],
                              module="mm_excitor.feature_cache")
    assert status == 2
    one_error_line(stderr, f"image root is not a directory: {tmp_path / 'nowhere'}")
    # A truncated shard is not an error for the builder: running the command again recomputes it.
    cache = damaged(assets, tmp_path / "truncated", "truncated shard")
    status, _ = run_main(monkeypatch, capsys, cli + ["--image-root", str(images), "--out", str(cache), *common],
                         module="mm_excitor.feature_cache")
    assert status == 0
    assert (cache / "shard-00001.npy").read_bytes() == (assets / "cache" / "shard-00001.npy").read_bytes()


def test_the_cache_cli_in_a_real_process(assets, tmp_path):
    """The module's command as a user types it (train_caption.py's is tests/test_entry_points.py's)."""
    cache = damaged(assets, tmp_path, "corrupt manifest")
    result = subprocess.run(
        [sys.executable, "-m", "mm_excitor.feature_cache", "--image-root", str(assets / "shapes" / "coco" / "images"),
         "--out", str(cache), "--model-name", TINY_ASSETS_CLIP,
         "--model-config-file", str(assets / f"{TINY_ASSETS_CLIP}.json"), "--shard-size", "16", "--num-workers", "0",
         "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    one_error_line(result.stderr, f"{cache}/cache.json: not valid JSON")
