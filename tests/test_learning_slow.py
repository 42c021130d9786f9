"""The demo's learning run: real SmolLM2-135M, random-init tiny CLIP, shapes captions (about 10 min on 2 cores).

Run with `make test-slow`, which first builds `make demo`'s assets (.cache/smollm2-135m-instruct, .cache/shapes-demo).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import train_caption

ASSETS = (Path(".cache/smollm2-135m-instruct/config.json"), Path(".cache/shapes-demo/coco/dataset_coco.json"))


@pytest.mark.slow
def test_demo_captions_depend_on_the_image(tmp_path):
    summary = train_caption.main(["--config", "configs/demo.yaml", f"train.output_dir={tmp_path}", "train.resume=null"])
    image, blind = summary["eval"]["image"], summary["eval"]["blind"]
    assert image["CIDEr"] > 300 and image["CIDEr"] > 20 * max(blind["CIDEr"], 1.0)  # x100, as papers report it
    references = {i["cocoid"]: i["sentences"][0]["raw"]
                  for i in json.loads(ASSETS[1].read_text())["images"] if i["split"] == "test"}
    results = json.loads((tmp_path / "eval" / "step-300" / "image" / "captions.json").read_text())
    colour = sum(r["caption"].split()[1:2] == references[r["image_id"]].split()[1:2] for r in results)
    assert colour / len(results) > 0.9
