"""The demo's learning run: real SmolLM2-135M, random-init tiny CLIP, shapes captions (about 10 min on 2 cores).

Run with `make test-slow`; it needs `make demo`'s assets (.cache/smollm2-135m-instruct, .cache/shapes-demo).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import train_caption

ASSETS = (Path(".cache/smollm2-135m-instruct/config.json"), Path(".cache/shapes-demo/coco/dataset_coco.json"))


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in ASSETS), reason="run `make demo` once to create its assets")
def test_demo_captions_depend_on_the_image(tmp_path):
    summary = train_caption.main(["--config", "configs/demo.yaml", f"train.output_dir={tmp_path}", "train.resume=null"])
    image, blind = summary["eval"]["image"], summary["eval"]["blind"]
    assert image["CIDEr"] > 3.0 and image["CIDEr"] > 20 * max(blind["CIDEr"], 0.01)
    references = {i["cocoid"]: i["sentences"][0]["raw"]
                  for i in json.loads(ASSETS[1].read_text())["images"] if i["split"] == "test"}
    results = json.loads((tmp_path / "eval" / "step-300" / "image" / "captions.json").read_text())
    colour = sum(r["caption"].split()[1:2] == references[r["image_id"]].split()[1:2] for r in results)
    assert colour / len(results) > 0.9
