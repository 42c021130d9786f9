"""The visual-conversation run: the Excitor trained through the instruct task on the shapes conversations in LLaVA's
format (real SmolLM2-135M, random-init tiny CLIP), scored on held-out conversations with and without the image
(about 40 min on 2 shared cores; its numbers: docs/results.md, "Visual conversations through the instruct task").

Run with `make test-slow`, which first builds .cache/smollm2-135m-instruct and .cache/shapes-conversations
(`make shapes-conversations`).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import train_instruct

ASSETS = (Path(".cache/smollm2-135m-instruct/config.json"), Path(".cache/shapes-conversations/manifest.json"))


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in ASSETS), reason="make shapes-conversations (and the SmolLM2 copy)")
def test_held_out_follow_ups_are_answered_from_the_image_and_the_earlier_turns(tmp_path):
    summary = train_instruct.main(["--config", "configs/instruct_shapes_llava.yaml", f"train.output_dir={tmp_path}",
                                   "train.resume=null"])
    image, blind = summary["eval"]["image"], summary["eval"]["blind"]
    assert image["exact_match"] > 60 and image["exact_match"] > blind["exact_match"] + 25
    assert image["answer_nll"] < blind["answer_nll"]
    run = tmp_path / "eval" / "step-200"
    # the follow-ups ("And what colour is it?"): answered from the image and the object the earlier turn named
    assert exact_match(run / "image", "And what") > exact_match(run / "blind", "And what") + 30


def exact_match(run: Path, kind: str) -> float:
    """Exact match (%) of the held-out turns whose question starts with `kind`."""
    prompts = {row["id"]: row["prompt"] for row in map(json.loads, (run / "answers.jsonl").read_text().splitlines())}
    verdicts = [a["exact"] for a in json.loads((run / "instruct_scores.json").read_text())["answers"]
                if prompts[a["id"]].startswith(kind)]
    assert verdicts, kind
    return 100 * sum(verdicts) / len(verdicts)
