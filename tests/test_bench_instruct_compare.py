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
    return {"heldout_nll": nll, "pool_nll": 2 * nll, "answer_tokens": tokens, "stopped": stopped,
            "probe": {"accuracy": probe, "all": statistics.fmean(probe.values())}}


def test_summaries_are_the_mean_and_spread_over_seeds_and_the_change_against_the_base():
    base = scores(2.0, 10.0, 50.0, {"antonym": 40.0, "arithmetic": 60.0})
    seeds = [scores(1.5, 8.0, 100.0, {"antonym": 42.0, "arithmetic": 58.0}),
             scores(1.7, 12.0, 50.0, {"antonym": 38.0, "arithmetic": 56.0})]
    summary = summarise(seeds, base)
    assert summary["heldout_nll"]["mean"] == pytest.approx(1.6)
    assert summary["heldout_nll"]["std"] == pytest.approx(statistics.stdev([1.5, 1.7]))
    assert summary["heldout_nll"]["vs_base"] == pytest.approx(-0.4)
    assert summary["pool_nll"]["vs_base"] == pytest.approx(-0.8)
    assert summary["probe"]["antonym"] == {"mean": 40.0, "std": pytest.approx(statistics.stdev([42, 38])),
                                           "vs_base": 0.0}
    assert summary["probe_all"]["mean"] == pytest.approx(48.5) and summary["probe_all"]["vs_base"] == -1.5
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


@pytest.fixture(scope="module")
def tiny_comparison(tmp_path_factory):
    """The comparison on tiny assets: a random-init LM whose tokenizer has a chat template, a 24-record pool in its
    words (and one record repeating a held-out instruction), the base and two methods over two seeds, two steps
    each."""
    from data.heldout import heldout_instructions
    from tests.delia.helpers import chat_tokenizer, pool_records
    from tests.tiny_models import TINY_ASSETS_CLIP, TINY_CLIP_CONFIG, tiny_model

    root = tmp_path_factory.mktemp("instruct-compare")
    tiny_model().save_pretrained(root / "lm")
    chat_tokenizer().save_pretrained(root / "lm")
    (root / f"{TINY_ASSETS_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    held_out_query = heldout_instructions()[0][0]
    with open(root / "pool.jsonl", "w", encoding="utf-8") as handle:
        for record in pool_records(24):
            handle.write(json.dumps({"id": record.id, "query": record.query, "answer": record.answer}) + "\n")
        handle.write(json.dumps({"id": "leak", "query": held_out_query, "answer": "a red circle"}) + "\n")
    overrides = [
        f"model.vision.model_name={TINY_ASSETS_CLIP}", f"model.vision.model_config_file={root / 'TinyAssetsViT.json'}",
        "model.excitor.num_layers=2", "model.excitor.num_prompts=4", "model.excitor.rank=4", "model.lora.r=4",
        "data.max_length=64", "train.batch_size=4", "train.warmup_steps=1", "train.save_every_steps=2",
        "train.tensorboard=false",
    ]
    argv = ["--task", "instruct", "--methods", "base,excitor,lora", "--seeds", "0,1", "--steps", "2",
            "--model", str(root / "lm"), "--pool", str(root / "pool.jsonl"), "--val-items", "2", "--eval-items",
            "4", "--delia-ratio", "1", "--answer-tokens", "3", "--probe-per-category", "2", "--lr", "excitor=1e-2,lora=1e-2",
            "--side-by-side-repeats", "1", "--out", str(root / "out"), "--cache", str(root / "cache"),
            *[arg for value in overrides for arg in ("--override", value)]]
    return compare.main(argv), root / "out", argv


def test_the_instruct_comparison_tabulates_every_runs_own_scores(tiny_comparison):
    results, out, _ = tiny_comparison
    assert [row["row"] for row in results["rows"]] == ["base", "excitor", "lora"]
    assert results["split"] == {"train": 9, "val": 2, "eval": 4, "delia": 9} and results["seeds"] == [0, 1]
    assert results["left_out"] == ["leak"]  # it repeats a held-out instruction
    trained = [json.loads(line)["id"] for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert len(trained) == 9 and "leak" not in trained
    base = results["rows"][0]
    assert base["trainable_parameters"] == 0 and "vs_base" not in base["heldout_nll"]
    categories = set(base["probe"])
    from eval.probe import PROBE_FILE, load_probe

    assert categories == {question["category"] for question in load_probe(PROBE_FILE)}
    assert all(base["scores"][0]["probe"]["chance"][c] == 25.0 for c in categories)
    for row in results["rows"][1:]:
        assert len(row["runs"]) == 2 and row["lr"] == 1e-2
        kept = [json.loads((out / row["row"] / "lr0.01" / f"seed{seed}" / "instruct_scores.json").read_text())
                for seed in (0, 1)]
        per_seed = [k["scores"] for k in kept]
        assert [s["heldout_nll"] for s in row["scores"]] == [s["heldout_nll"] for s in per_seed]
        assert per_seed[0]["heldout_nll"] != per_seed[1]["heldout_nll"]  # the seeds trained different adapters
        for key in ("heldout_nll", "pool_nll", "answer_tokens", "stopped"):
            values = [s[key] for s in per_seed]
            assert row[key]["mean"] == pytest.approx(statistics.fmean(values))
            assert row[key]["std"] == pytest.approx(statistics.stdev(values))
        assert row["heldout_nll"]["vs_base"] == pytest.approx(row["heldout_nll"]["mean"] - base["heldout_nll"]["mean"])
        for category in categories:
            values = [s["probe"]["accuracy"][category] for s in per_seed]
            assert row["probe"][category]["mean"] == pytest.approx(statistics.fmean(values))
        assert all(len(k["scores"]["answers"]) == 4 and all(0 <= a["tokens"] <= 3 for a in k["scores"]["answers"])
                   for k in kept)
        adapter = json.loads((out / row["row"] / "lr0.01" / "seed0" / "checkpoints" / "step-2" /
                              "adapter_config.json").read_text())
        assert row["trainable_parameters"] == adapter["num_parameters"] > 0
        assert row["step_s_side_by_side"] > 0
    table = (out / "compare.md").read_text()
    assert all(f"| {name} |" in table for name in ("base", "excitor", "lora")) and "lora's, side by side" in table
    assert f"{results['rows'][1]['heldout_nll']['mean']:.3f}" in table
    assert json.loads((out / "compare.json").read_text())["rows"][2]["row"] == "lora"
    assert (out / "compare.png").stat().st_size > 1000


def test_a_finished_instruct_comparison_is_not_trained_or_scored_again(tiny_comparison, capsys):
    results, out, argv = tiny_comparison
    capsys.readouterr()
    again = compare.main(argv)
    printed = capsys.readouterr().out
    assert all(f"{row} (lr 0.01, seed {seed}): done before" in printed for row in ("excitor", "lora") for seed in (0, 1))
    assert [row["scores"] for row in again["rows"]] == [row["scores"] for row in results["rows"]]
