"""DELIA through the one generic train(): the shapes_json task on the tiny assets with R x |task| DELIA items, for
the Excitor and LoRA alike; the mix is recorded in the run config, and a resume with another mix is refused."""
from __future__ import annotations

import json

import pytest

from tasks import get_task
from tasks.run import train
from tests.delia.helpers import write_samples
from tests.tiny_models import TINY_ASSETS_CLIP, write_tiny_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_assets(tmp_path_factory.mktemp("assets"))


def tiny_argv(assets, out, samples, ratio: float, method: str = "excitor", steps: int = 2) -> list[str]:
    coco = assets / "shapes" / "coco"
    return [
        "--config", "configs/shapes_json.yaml",
        f"model.method={method}", f"model.language_model={assets / 'lm'}",
        f"model.vision.model_name={TINY_ASSETS_CLIP}",
        f"model.vision.model_config_file={assets / (TINY_ASSETS_CLIP + '.json')}", "model.vision.token_grid=null",
        "model.excitor.num_layers=2", "model.excitor.num_prompts=4", "model.excitor.rank=4",
        f"data.annotations={coco / 'dataset_coco.json'}", f"data.image_root={coco / 'images'}",
        "data.train_limit=8", "data.max_length=48", f"data.delia.samples={samples}", f"data.delia.ratio={ratio}",
        "train.batch_size=4", f"train.max_steps={steps}", "train.warmup_steps=1", "train.save_every_steps=1",
        "train.eval_every_steps=100", "train.tensorboard=false", "train.device=cpu", "train.progress_bar=false",
        f"train.output_dir={out}", "decoding.batch_size=8", "decoding.max_new_tokens=4",
    ]


@pytest.mark.parametrize("method", ["excitor", "lora"])
def test_a_mixed_run_trains_evaluates_and_records_its_mix(assets, tmp_path, method):
    samples = write_samples(tmp_path / "samples.jsonl", 30)
    summary = train(get_task("shapes_json"), tiny_argv(assets, tmp_path / "run", samples, 1.5, method))
    stored = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert stored["run_config"]["data"]["delia"] == {"samples": samples, "ratio": 1.5, "seed": 0}
    assert stored["run_config"]["data"]["paraphrases"]["name"] == "shapes_json"
    identity = stored["data"]
    assert identity["train_items"] == 8 and identity["delia"]["train_items"] == 12
    assert set(summary["eval"]) == {"image", "blind"}
    assert set(summary["eval"]["image"]) == {"valid", "accuracy", "colour", "shape"}


def test_resuming_with_another_mix_is_refused(assets, tmp_path):
    first = write_samples(tmp_path / "first.jsonl", 30)
    train(get_task("shapes_json"), tiny_argv(assets, tmp_path / "run", first, 1.0) + ["evaluate=false"])
    other = tmp_path / "other.jsonl"  # another file (data.delia.samples may move): the same count, other items
    other.write_text("".join(reversed(open(first).read().splitlines(keepends=True))))
    with pytest.raises(Exception, match=r"data\.identity\.delia"):
        train(get_task("shapes_json"), tiny_argv(assets, tmp_path / "run", str(other), 1.0, steps=3)
              + ["evaluate=false", "train.resume=latest"])
    moved = tmp_path / "moved.jsonl"  # the same samples at another path resume
    moved.write_text(open(first).read())
    summary = train(get_task("shapes_json"), tiny_argv(assets, tmp_path / "run", str(moved), 1.0, steps=3)
                    + ["evaluate=false", "train.resume=latest"])
    assert summary["steps"] == 3
