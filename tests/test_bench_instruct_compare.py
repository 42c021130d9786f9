"""`python -m bench.compare --task instruct` (bench/instruct_compare.py): the pool split, the answer statistics, the
mean and spread over seeds against the frozen base, and the whole comparison end to end on tiny assets."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from bench import compare
from bench.instruct_compare import answer_stats, split_sizes, summarise


def test_the_pool_split_leaves_r_times_the_training_split_for_delia():
    assert split_sizes(100, 10, 20, 1.0) == {"train": 35, "val": 10, "eval": 20, "delia": 35}
    assert split_sizes(100, 10, 20, 0.0) == {"train": 70, "val": 10, "eval": 20, "delia": 0}
    sizes = split_sizes(101, 10, 20, 0.5)
    assert sizes["train"] + sizes["delia"] <= 71 and sizes["delia"] == round(0.5 * sizes["train"])
    with pytest.raises(SystemExit, match="a pool of 12 records cannot give 10 validation"):
        split_sizes(12, 10, 2, 1.0)


def test_answer_stats_count_tokens_up_to_eos_and_whether_the_answer_stopped():
    eos, pad = 2, 0
    new = torch.tensor([[5, 6, 2, pad], [5, 6, 7, 8], [2, pad, pad, pad]])
    assert answer_stats(new, eos, 4) == [{"tokens": 2, "stopped": True}, {"tokens": 4, "stopped": False},
                                         {"tokens": 0, "stopped": True}]


def scores(nll, tokens, stopped, probe):
    return {"answer_nll": nll, "answer_tokens": tokens, "stopped": stopped, "probe": {"accuracy": probe}}


def test_summaries_are_the_mean_and_spread_over_seeds_and_the_change_against_the_base():
    base = scores(2.0, 10.0, 50.0, {"antonym": 40.0, "arithmetic": 60.0})
    seeds = [scores(1.5, 8.0, 100.0, {"antonym": 42.0, "arithmetic": 58.0}),
             scores(1.7, 12.0, 50.0, {"antonym": 38.0, "arithmetic": 56.0})]
    summary = summarise(seeds, base)
    assert summary["answer_nll"]["mean"] == pytest.approx(1.6)
    assert summary["answer_nll"]["std"] == pytest.approx(statistics.stdev([1.5, 1.7]))
    assert summary["answer_nll"]["vs_base"] == pytest.approx(-0.4)
    assert summary["probe"]["antonym"] == {"mean": 40.0, "std": pytest.approx(statistics.stdev([42, 38])),
                                           "vs_base": 0.0}
    assert summary["probe_mean"]["mean"] == pytest.approx(48.5) and summary["probe_mean"]["vs_base"] == -1.5
    assert "vs_base" not in summarise([base], None)["stopped"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "excitor,lorra"], "unknown row"),
    (["--seeds", "0,0"], "distinct seeds"),
    (["--sweep", "lora_all_linear=1e-3,1e-3"], "distinct positive learning rates"),
    (["--sweep", "prefix=1e-3,2e-3"], "unknown method 'prefix'"),
])
def test_bad_instruct_arguments_are_one_line_errors(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        compare.main(["--task", "instruct", "--out", str(tmp_path), *argv])


def test_seeds_belong_to_the_instruct_preset():
    with pytest.raises(SystemExit, match="--seeds is the instruct preset's"):
        compare.main(["--task", "shapes-caption", "--seeds", "0,1"])
