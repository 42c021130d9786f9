"""train_caption.py and train_scienceqa.py end to end on a tiny model and a tiny shapes set."""
from __future__ import annotations

import json

import pytest

import train_caption
import train_scienceqa
from tests.tiny_models import TINY_ASSETS_CLIP, write_tiny_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_assets(tmp_path_factory.mktemp("assets"))


def common(assets, out):
    return [
        f"model.language_model={assets / 'lm'}",
        f"model.vision.model_name={TINY_ASSETS_CLIP}",
        f"model.vision.model_config_file={assets / (TINY_ASSETS_CLIP + '.json')}",
        "model.excitor.num_layers=2", "model.excitor.num_prompts=4", "model.excitor.rank=4",
        "model.excitor.visual_prompt_mode=concat",
        "train.max_steps=3", "train.warmup_steps=1", "train.batch_size=4", "train.lr=1e-2", "train.precision=fp32",
        f"train.output_dir={out}", "train.num_workers=0", "train.save_every_steps=2", "train.eval_every_steps=2",
        "train.progress_bar=false", "train.tensorboard=false", "train.device=cpu",
        "decoding.batch_size=8", "decoding.max_new_tokens=4",
    ]


def test_train_caption_trains_checkpoints_and_scores_with_a_blind_control(assets, tmp_path):
    coco = assets / "shapes" / "coco"
    summary = train_caption.main(common(assets, tmp_path / "run") + [
        f"data.train_annotations={coco / 'dataset_coco.json'}", f"data.image_root={coco / 'images'}",
        "data.max_length=32",
    ])
    assert set(summary["eval"]) == {"image", "blind"}
    assert {"Bleu_4", "CIDEr", "METEOR", "ROUGE_L"} <= set(summary["eval"]["image"])
    results = json.loads((tmp_path / "run" / "eval" / "step-3" / "image" / "captions.json").read_text())
    test_ids = {i["cocoid"] for i in json.loads((coco / "dataset_coco.json").read_text())["images"]
                if i["split"] == "test"}
    assert {r["image_id"] for r in results} == test_ids
    assert (tmp_path / "run" / "checkpoints" / "step-3" / "adapter_model.safetensors").is_file()


def test_train_scienceqa_scores_the_official_breakdown(assets, tmp_path):
    summary = train_scienceqa.main(common(assets, tmp_path / "run") + [
        f"data.root={assets / 'shapes' / 'scienceqa'}", "data.max_length=256",
    ])
    assert set(summary["eval"]) == {"image", "blind"}
    assert {"Avg", "NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12"} <= set(summary["eval"]["image"])
    official = json.loads((tmp_path / "run" / "eval" / "step-3" / "image" / "scienceqa_results.json").read_text())
    assert set(official) >= {"results"} and official["results"]


def test_unknown_config_key_lists_the_valid_ones(assets, tmp_path):
    with pytest.raises(ValueError, match="did you mean 'train.blr'"):
        train_caption.main(common(assets, tmp_path) + ["train.blrr=1"])


def test_a_partial_section_keeps_the_defaults_of_its_parent():
    from mm_excitor.recipe import load_config
    from tasks.caption import CaptionRunConfig

    config = load_config(CaptionRunConfig, None, ["model.excitor.rank=8"])
    assert config.model.excitor.rank == 8 and config.model.excitor.visual_prompt_mode == "concat"


def test_truncation_and_skips_are_counted_in_the_run_summary(assets, tmp_path):
    coco = assets / "shapes" / "coco"
    args = common(assets, tmp_path / "run") + [
        f"data.train_annotations={coco / 'dataset_coco.json'}", f"data.image_root={coco / 'images'}",
        "data.max_length=6", "data.prompt=describe the image in one sentence . caption :", "evaluate=false",
    ]
    summary = train_caption.main(args)
    data = summary["data"]
    assert data["examples"] == 3 * 4 and data["truncated"] == data["examples"] and data["prompt_tokens_cut"] > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data"] == data


def test_bad_input_ends_in_a_one_line_error_not_a_traceback(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "train_caption.py", "--config", "configs/demo.yaml",
         f"model.language_model={tmp_path / 'missing-lm'}", f"train.output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: no language model at {tmp_path / 'missing-lm'}" in result.stderr


@pytest.mark.parametrize("method", ["lora", "llama_adapter", "prefix"])
def test_every_method_trains_checkpoints_and_evaluates_through_the_same_entry_point(assets, tmp_path, method):
    from tasks.run import load_run

    run = tmp_path / "run"
    summary = train_scienceqa.main(common(assets, run) + [
        f"data.root={assets / 'shapes' / 'scienceqa'}", "data.max_length=256", f"model.method={method}",
        "model.lora.r=4", "model.llama_adapter.adapter_layers=2", "model.llama_adapter.adapter_len=3",
    ])
    assert set(summary["eval"]) == {"image", "blind"} and "IMG" in summary["eval"]["image"]
    assert json.loads((run / "checkpoints" / "step-3" / "adapter_config.json").read_text())["method"] == method
    assert load_run("scienceqa", run).model.method == method  # what `python -m eval.scienceqa generate` builds
    with pytest.raises(ValueError, match=f"holds a '{method}' adapter; this model uses the 'excitor' method"):
        load_run("scienceqa", run, overrides=["model.method=excitor"])


def test_a_bad_method_name_is_a_one_line_config_error(assets, tmp_path):
    from mm_excitor.recipe import ConfigError

    with pytest.raises(ConfigError, match="unknown model.method 'lora_adapter'; one of excitor, llama_adapter") as e:
        train_scienceqa.main(common(assets, tmp_path) + ["model.method=lora_adapter"])
    assert "\n" not in str(e.value)
