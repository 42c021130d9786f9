"""Smoke test of bench/caption_scoring.py on a tiny set: the JSON's fields and the equality check, never timings.

METEOR is replaced on both in-process sides by the same stand-in (its JVM takes seconds to start; its parity with
pycocoevalcap is tested in tests/eval/test_eval_caption_scoring.py); the PTB tokenizer and the other scorers run.
The slow test runs the real thing, the CLI side included, on 20 images.
"""
from __future__ import annotations

import json

import pytest

from bench import caption_scoring as bench
from eval.caption_metrics import METRICS
from tests.meteor_helpers import StandInMeteor


class _TheirMeteor:
    """Stands in for pycocoevalcap's Meteor inside COCOEvalCap."""

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        return 0.25, [0.25] * len(gts)

    def method(self) -> str:
        return "METEOR"


def test_synthetic_set_is_deterministic_coco_format() -> None:
    gt, results = bench.synthetic_coco(50, refs_per_image=5, seed=1)
    assert (gt, results) == bench.synthetic_coco(50, refs_per_image=5, seed=1)
    assert gt != bench.synthetic_coco(50, refs_per_image=5, seed=2)[0]
    assert len(gt["images"]) == len(results) == 50 and len(gt["annotations"]) == 250
    assert [r["image_id"] for r in results] == [image["id"] for image in gt["images"]]
    words = [len(a["caption"].split()) for a in gt["annotations"]]
    assert 8 <= sum(words) / len(words) <= 13


def test_benchmark_writes_json_and_catches_a_difference(tmp_path, monkeypatch) -> None:
    from pycocoevalcap import eval as coco_eval

    from eval import caption_metrics

    monkeypatch.setattr(coco_eval, "Meteor", _TheirMeteor)
    monkeypatch.setattr(caption_metrics, "MeteorProcess", StandInMeteor)
    monkeypatch.setattr(StandInMeteor, "value", 0.25)
    out = tmp_path / "caption_scoring.json"
    argv = ["--images", "12", "--repeats", "1", "--sides", "cocoevalcap,score_captions", "--workdir",
            str(tmp_path / "work"), "--out", str(out), "--quiet"]
    returned = bench.main(argv)
    results = json.loads(out.read_text())
    assert results["equal_to_cocoevalcap"] is returned["equal_to_cocoevalcap"] is True
    assert results["data"]["images"] == 12 and results["data"]["captions"] == 12 * 6
    assert set(results["timings"]) == {"cocoevalcap", "score_captions"}
    for side in results["timings"].values():
        assert side["median_s"] > 0 and len(side["samples_s"]) == 1 and side["cpu_median_s"] > 0
    ratio = results["ratios"]["score_captions"]
    assert ratio["median_over_cocoevalcap"] > 0 and len(ratio["per_round"]) == 1
    assert set(results["targets_met"]["score_captions"]) == {"le_1.0x_cocoevalcap", "under_60_s"}
    assert results["scores"]["score_captions"] == results["scores"]["cocoevalcap"]
    assert results["scores"]["cocoevalcap"]["CIDEr"] > 0.1  # real scores on the synthetic captions
    difference = results["largest_difference_from_cocoevalcap"]["score_captions"]
    assert difference["same_images"] and all(difference[m] == {"corpus": 0.0, "per_image": 0.0} for m in METRICS)
    for key in ("java", "pycocoevalcap", "load_average_at_start", "load_average_at_end", "command", "wall_s"):
        assert key in results["environment"], key
    assert "| `score_captions` |" in results["table"] and "equal to COCOEvalCap's within 1e-06: yes" in results["table"]
    assert list((tmp_path / "work").iterdir()) == []  # the synthetic files and reports are removed

    monkeypatch.setattr(StandInMeteor, "value", 0.2500011)  # just over the tolerance
    mismatch = bench.main(argv)
    assert mismatch["equal_to_cocoevalcap"] is False
    assert mismatch["largest_difference_from_cocoevalcap"]["score_captions"]["METEOR"]["corpus"] == pytest.approx(1.1e-6)
    assert "within 1e-06: NO" in mismatch["table"]


@pytest.mark.slow
def test_benchmark_with_real_meteor_and_the_cli(tmp_path) -> None:
    results = bench.main(["--images", "20", "--repeats", "1", "--out", str(tmp_path / "r.json"), "--quiet"])
    assert results["equal_to_cocoevalcap"] is True
    assert set(results["ratios"]) == {"score_captions", "cli"}
    assert 0 < results["scores"]["cli"]["METEOR"] == results["scores"]["cocoevalcap"]["METEOR"]
