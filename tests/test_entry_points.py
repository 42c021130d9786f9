"""train_caption.py and train_scienceqa.py end to end on a tiny model and a tiny shapes set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_caption
import train_scienceqa
from tests.tiny_models import TINY_ASSETS_CLIP, write_tiny_assets

REPO = Path(__file__).resolve().parents[1]


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


def test_train_scienceqa_option_format_is_scored_by_option_likelihood(assets, tmp_path):
    summary = train_scienceqa.main(common(assets, tmp_path / "run") + [
        f"data.root={assets / 'shapes' / 'scienceqa'}", "data.max_length=256", "data.prompt_format=QCM-option",
    ])
    assert set(summary["eval"]) == {"image", "blind"} and summary["eval_protocol"].startswith("option likelihood")
    for run in summary["eval"]:
        report = json.loads((tmp_path / "run" / "eval" / "step-3" / run / "scienceqa_scores.json").read_text())
        assert report["decoding"]["protocol"].startswith("option likelihood") and report["n_unparsed"] == 0


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


BAD_COMMANDS = {
    "missing LM": (["train_caption.py", "--config", "configs/demo.yaml", "model.language_model={tmp}/missing-lm",
                    "train.output_dir={tmp}/run"], "no language model at {tmp}/missing-lm"),
    "missing feature cache": (["train_caption.py", "--config", "configs/demo.yaml", "data.feature_cache={tmp}/none",
                               "train.output_dir={tmp}/run"], "{tmp}/none"),
    "bad method": (["train_scienceqa.py", "--config", "configs/shapes_scienceqa.yaml", "model.method=lorra"],
                   "unknown model.method 'lorra'"),
    "bad value": (["train_scienceqa.py", "--config", "configs/shapes_scienceqa.yaml", "train.batch_size=two"],
                  "train.batch_size"),
    "missing results": (["-m", "eval.caption", "score", "--results", "{tmp}/R.json", "--annotations", "{tmp}/GT.json",
                         "--out", "{tmp}/report"], "{tmp}/"),
    "missing problems": (["-m", "eval.scienceqa", "score", "--predictions", "{tmp}/P.jsonl", "--problems",
                          "{tmp}/problems.json", "--out", "{tmp}/report"], "{tmp}/"),
    "bad shapes option": (["-m", "data.shapes", "--out", "{tmp}/shapes", "--image-size", "8"], "image_size"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_input_ends_in_a_one_line_error_not_a_traceback(tmp_path, case):
    import subprocess
    import sys

    args, expected = BAD_COMMANDS[case]
    result = subprocess.run([sys.executable, *(a.format(tmp=tmp_path) for a in args)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(errors) == 1
    assert expected.format(tmp=tmp_path) in errors[0]


def test_a_run_resumes_with_other_init_settings_but_not_with_another_rank(assets, tmp_path):
    """Init settings only say where the adapter started, and a resumed run restores its tensors; the rank changes
    what the adapter is."""
    out = tmp_path / "run"
    train_caption.main(caption_args(assets, out, "evaluate=false", "train.max_steps=2"))
    summary = train_caption.main(caption_args(assets, out, "evaluate=false", "train.resume=latest",
                                              "model.excitor.affinity_init_gain=0.5",
                                              "model.excitor.prompt_init_std=0.1"))
    assert summary["steps"] == 3
    with pytest.raises(Exception, match=r"model\.excitor\.rank"):
        train_caption.main(caption_args(assets, out, "evaluate=false", "train.resume=latest", "train.max_steps=4",
                                        "model.excitor.rank=8"))


# --- reliability through the real commands (subprocesses, DataLoader workers, torchrun with gloo) -------------------

def caption_args(assets, out, *extra):
    coco = assets / "shapes" / "coco"
    return [*common(assets, out), f"data.train_annotations={coco / 'dataset_coco.json'}",
            f"data.image_root={coco / 'images'}", "data.max_length=32", *extra]


def run_command(args, timeout=240, nproc=None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable] if nproc is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.run([*launcher, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def adapter(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "checkpoints" / "step-3" / "adapter_model.safetensors"))


def test_a_crash_in_a_dataloader_worker_ends_the_run_with_one_line(assets, tmp_path):
    """An unreadable training image decoded in a worker: exit 2 at once with the image named, no traceback, no
    worker left waiting for a signal it ignores."""
    import shutil

    broken = tmp_path / "assets"
    shutil.copytree(assets, broken)
    coco = broken / "shapes" / "coco"
    for image in json.loads((coco / "dataset_coco.json").read_text())["images"]:
        if image["split"] == "train":
            (coco / "images" / image["filepath"] / image["filename"]).write_bytes(b"\x89PNG not an image")
    result = run_command(["train_caption.py", *caption_args(broken, tmp_path / "run", "train.num_workers=1")],
                         timeout=180)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and "cannot read image" in errors[0] and "DataLoader worker" in errors[0]
    assert "Traceback" not in result.stderr


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
    assert load_run("scienceqa", run).model.method == method  # what `python -m tasks.generate scienceqa` builds
    with pytest.raises(ValueError, match=f"holds a '{method}' adapter; this model uses the 'excitor' method"):
        load_run("scienceqa", run, overrides=["model.method=excitor"])


def test_a_bad_method_name_is_a_one_line_config_error(assets, tmp_path):
    from mm_excitor.recipe import ConfigError

    with pytest.raises(ConfigError, match="unknown model.method 'lora_adapter'; one of excitor, llama_adapter") as e:
        train_scienceqa.main(common(assets, tmp_path) + ["model.method=lora_adapter"])
    assert "\n" not in str(e.value)


def test_the_same_command_and_seed_gives_the_same_adapter(assets, tmp_path):
    """train.seed fixes everything random, the initial prompts, projections and low-rank weights included."""
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = run_command(["train_caption.py", *caption_args(assets, tmp_path / name, "evaluate=false",
                                                                f"train.seed={seed}")])
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = adapter(tmp_path / name)
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert any(not torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


@pytest.fixture(scope="module")
def one_process_caption(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("one-process")
    result = run_command(["train_caption.py", *caption_args(assets, out, "train.batch_size=4")])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_trains_equal_to_one_process_and_finishes_its_evaluation(assets, tmp_path, one_process_caption,
                                                                        mode):
    """2 processes x batch 2 = 1 process x batch 4 on captions of different lengths (to 1e-6), and the end-of-run
    evaluation (images, then the image-blind control) completes on every rank, under DDP and under FSDP."""
    out = tmp_path / "run"
    result = run_command(["train_caption.py", *caption_args(assets, out, "train.batch_size=2",
                                                            f"train.distributed={mode}")], nproc=2, timeout=420)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    one, two = adapter(one_process_caption), adapter(out)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=0, msg=name)
    for run in ("image", "blind"):
        merged = json.loads((out / "eval" / "step-3" / run / "captions.json").read_text())
        reference = json.loads((one_process_caption / "eval" / "step-3" / run / "captions.json").read_text())
        assert [r["image_id"] for r in merged] == [r["image_id"] for r in reference]
        assert (out / "eval" / "step-3" / run / "caption_scores.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 4
