"""Smoke test of bench/probe_scoring.py on a tiny LM: both ways score the same questions, give the same predictions
and the JSON has its fields; never timings."""
from __future__ import annotations

import json

from tests.delia.helpers import chat_tokenizer
from tests.eval.test_eval_probe import QUESTIONS
from tests.tiny_models import tiny_model


def test_both_ways_score_the_same_subset_alike_and_the_json_says_so(tmp_path):
    from bench import probe_scoring

    tiny_model(seed=2).save_pretrained(tmp_path / "lm")
    chat_tokenizer().save_pretrained(tmp_path / "lm")
    (tmp_path / "probe.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out = tmp_path / "probe_scoring.json"
    probe_scoring.main(["--model", str(tmp_path / "lm"), "--probe", str(tmp_path / "probe.jsonl"), "--per-category",
                        "1", "--batch-size", "4", "--out", str(out), "--quiet"])
    results = json.loads(out.read_text())
    assert results["questions"] == 2 and results["same_predictions"] is True  # one colour, one shape question
    assert results["max_log_likelihood_difference"] < 1e-4
    assert set(results["timings"]) == {"full rows", "shared prompt"} and results["speedup"] > 0
    assert results["timings"]["shared prompt"]["median_s"] > 0 and "speed-up" in results["table"]
