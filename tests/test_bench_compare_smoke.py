"""bench/compare.py end to end on the tiny assets: every method trains, resumes instead of retraining, the retention
columns score every run and the frozen base text-only, and the comparison is written as JSON, Markdown and a plot."""
from __future__ import annotations

import json
import statistics

import pytest

from bench import compare, retention
from tests.delia.helpers import chat_tokenizer
from tests.eval.test_eval_probe import QUESTIONS
from tests.tiny_models import TINY_ASSETS_CLIP, write_tiny_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The tiny assets, their tokenizer with a chat template (the retention columns score chat replies), and a
    three-question probe."""
    root = write_tiny_assets(tmp_path_factory.mktemp("assets"))
    chat_tokenizer().save_pretrained(root / "lm")
    (root / "probe.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return root


def tiny_overrides(assets) -> list[str]:
    coco = assets / "shapes" / "coco"
    values = [
        f"model.language_model={assets / 'lm'}", f"model.vision.model_name={TINY_ASSETS_CLIP}",
        f"model.vision.model_config_file={assets / (TINY_ASSETS_CLIP + '.json')}", "model.vision.token_grid=null",
        "model.excitor.num_layers=2", "model.excitor.num_prompts=4", "model.excitor.rank=4",
        "model.llama_adapter.adapter_layers=2", "model.llama_adapter.adapter_len=4",
        f"data.train_annotations={coco / 'dataset_coco.json'}", f"data.image_root={coco / 'images'}",
        "data.max_length=32", "train.batch_size=4", "train.warmup_steps=1", "train.num_workers=0",
        "train.save_every_steps=2", "train.eval_every_steps=2", "train.tensorboard=false", "train.device=cpu",
        "decoding.batch_size=8", "decoding.max_new_tokens=4",
    ]
    return [arg for value in values for arg in ("--override", value)] + ["--probe", str(assets / "probe.jsonl")]


def test_compare_trains_each_method_once_and_writes_the_table(assets, tmp_path, capsys):
    methods = ["excitor", "lora", "llama_adapter", "prefix"]
    argv = ["--task", "shapes-caption", "--methods", ",".join(methods), "--steps", "2", "--out", str(tmp_path),
            "--gen-prompts", "2", "--gen-tokens", "2", *tiny_overrides(assets)]
    results = compare.main(argv)
    assert [row["method"] for row in results["rows"]] == methods
    for row in results["rows"]:
        assert row["trainable_parameters"] > 0 and row["step_s"] > 0 and row["peak_memory_bytes"] > 0
        assert set(row["image"]) >= {"CIDEr", "Bleu_4"} and set(row["blind"]) >= {"CIDEr"}
        assert row["generation_tokens_per_s"] > 0 and row["step_s_side_by_side"] > 0
        assert set(row["probe_categories"]) == {"colour", "shape"} and row["heldout_nll"] > 0
        assert row["probe_change"] == row["probe_accuracy"] - results["retention_base"]["probe_accuracy"]
        assert (tmp_path / row["method"] / f"lr{row['lr']:g}" / retention.RUN_FILE).is_file()
    written = json.loads((tmp_path / "compare.json").read_text())
    assert [r["method"] for r in written["rows"]] == methods and written["retention_base"]["heldout_nll"] > 0
    assert (tmp_path / retention.BASE_FILE).is_file()
    table = (tmp_path / "compare.md").read_text()
    assert all(f"| {method} |" in table for method in methods) and "excitor's, side by side" in table
    assert "probe acc (vs base)" in table and "| frozen base |" in table
    assert (tmp_path / "compare.png").stat().st_size > 1000
    capsys.readouterr()
    compare.main(argv)  # a finished method is not trained again
    again = capsys.readouterr().out
    rates = compare.LEARNING_RATES["shapes-caption"]
    assert all(f"{method} (lr {rates[method]:g}): done before" in again for method in methods)


def test_a_sweep_picks_the_lowest_validation_loss_and_its_runs_are_reused(assets, tmp_path, capsys):
    argv = ["--task", "shapes-caption", "--methods", "excitor", "--steps", "2", "--out", str(tmp_path),
            "--sweep", "1e-3,3e-2", "--sweep-extend", "1", "--gen-prompts", "2", "--gen-tokens", "2",
            "--side-by-side-repeats", "0", *tiny_overrides(assets)]
    results = compare.main(argv)
    tried = results["learning_rates"]["excitor"]
    grid_best = min(("0.001", "0.03"), key=lambda lr: tried[lr]["val_loss"])
    beyond = {"0.001": "3.33e-05", "0.03": "0.9"}[grid_best]  # a two-rate grid's winner is always at an edge
    assert set(tried) == {"0.001", "0.03", beyond} and tried["0.001"]["val_loss"] != tried["0.03"]["val_loss"]
    (row,) = results["rows"]
    assert f"{row['lr']:g}" == min(tried, key=lambda lr: tried[lr]["val_loss"])
    assert row["val_loss"] == tried[f"{row['lr']:g}"]["val_loss"]
    assert row["image"]["CIDEr"] == tried[f"{row['lr']:g}"]["image"]
    assert {path.name for path in (tmp_path / "excitor").iterdir()} == {f"lr{lr}" for lr in tried}
    table = (tmp_path / "compare.md").read_text()
    assert "Learning rates tried" in table and table.count("(chosen)") == 1
    capsys.readouterr()
    compare.main([*argv[:argv.index("--sweep")], "--lr", f"excitor={row['lr']:g}", *argv[argv.index("--sweep") + 4:]])
    assert f"excitor (lr {row['lr']:g}): done before" in capsys.readouterr().out  # the chosen run is the comparison's


def test_seeds_sweep_at_the_first_and_a_row_is_their_mean_and_spread(assets, tmp_path, capsys):
    argv = ["--task", "shapes-caption", "--methods", "excitor", "--steps", "2", "--out", str(tmp_path),
            "--sweep", "1e-3,3e-2", "--sweep-extend", "0", "--seeds", "0,1", "--probe-per-category", "1",
            "--gen-prompts", "2", "--gen-tokens", "2", "--side-by-side-repeats", "0", *tiny_overrides(assets)]
    results = compare.main(argv)
    (row,) = results["rows"]
    chosen = f"lr{row['lr']:g}"
    runs = {path.relative_to(tmp_path).as_posix() for path in tmp_path.glob("excitor/lr*/seed*")}
    assert runs == {"excitor/lr0.001/seed0", "excitor/lr0.03/seed0", f"excitor/{chosen}/seed1"}
    assert row["seeds"] == [0, 1] and [r["seed"] for r in row["per_seed"]] == [0, 1]
    assert [r["run"] for r in row["per_seed"]] == [str(tmp_path / "excitor" / chosen / f"seed{s}") for s in (0, 1)]
    for seed in (0, 1):
        config = json.loads((tmp_path / "excitor" / chosen / f"seed{seed}" / "train_config.json").read_text())
        assert config["run_config"]["train"]["seed"] == seed
    cider = [r["image"]["CIDEr"] for r in row["per_seed"]]
    assert row["image"]["CIDEr"] == pytest.approx(statistics.fmean(cider))
    assert row["spread"]["image"]["CIDEr"] == pytest.approx(statistics.stdev(cider))
    nll = [r["heldout_nll"] for r in row["per_seed"]]
    assert nll[0] != nll[1] and row["heldout_nll"] == pytest.approx(statistics.fmean(nll))
    assert row["spread"]["heldout_nll"] == pytest.approx(statistics.stdev(nll))
    assert row["val_loss"] == pytest.approx(statistics.fmean(r["val_loss"] for r in row["per_seed"]))
    assert results["learning_rates"]["excitor"][f"{row['lr']:g}"]["val_loss"] == row["per_seed"][0]["val_loss"]
    stored = json.loads((tmp_path / "excitor" / chosen / "seed1" / retention.RUN_FILE).read_text())
    assert stored["key"]["probe_per_category"] == 1 and len(row["probe_categories"]) == 2
    table = (tmp_path / "compare.md").read_text()
    assert "mean ± sample standard deviation over seeds 0, 1" in table.splitlines()[0]
    assert f"{row['heldout_nll']:.3f} ± {row['spread']['heldout_nll']:.3f}" in table
    capsys.readouterr()
    again = compare.main(argv)  # every seed's run is found where it was trained
    printed = capsys.readouterr().out
    assert all(f"excitor (lr {lr}, seed 0): done before" in printed for lr in ("0.001", "0.03"))
    assert f"excitor (lr {row['lr']:g}, seed 1): done before" in printed
    assert again["rows"][0]["per_seed"] == row["per_seed"]


def test_probe_per_category_keeps_the_first_questions_of_each_category(assets):
    questions = retention.probe_questions(assets / "probe.jsonl", 1)
    categories = [q["category"] for q in QUESTIONS]
    assert questions == [q for n, q in enumerate(QUESTIONS) if q["category"] not in categories[:n]]
    assert retention.probe_questions(assets / "probe.jsonl") == QUESTIONS


@pytest.mark.parametrize("seeds", ["0,0", ","])
def test_repeated_or_no_seeds_are_a_one_line_error(seeds):
    with pytest.raises(SystemExit, match="distinct seeds"):
        compare.main(["--task", "shapes-caption", "--seeds", seeds])


@pytest.mark.parametrize(("losses", "extend", "tried"), [
    ({1: 3.0, 2: 2.0, 4: 1.0, 8: 0.5, 16: 0.7}, 2, [1, 2, 4, 8, 16]),  # upper edge twice, then interior
    ({1: 3.0, 2: 2.0, 4: 1.0, 8: 0.5, 16: 0.4}, 2, [1, 2, 4, 8, 16]),  # stops after `extend` more
    ({0.25: 0.1, 0.5: 0.2, 1: 0.3, 2: 0.4, 4: 0.5}, 2, [1, 2, 4, 0.5, 0.25]),  # lower edge
    ({1: 2.0, 2: 1.0, 4: 3.0}, 2, [1, 2, 4]),  # interior: the grid is enough
    ({1: 2.0, 2: 1.0, 4: 0.5}, 0, [1, 2, 4]),
])
def test_a_sweep_extends_beyond_an_edge_that_wins(losses, extend, tried):
    assert list(compare.swept_rates([4, 1, 2], extend, losses.__getitem__)) == tried


@pytest.mark.parametrize("grid", ["0,1e-2", "1e-2,0.01", "1e-2,-1e-3"])
def test_a_sweep_grid_of_zero_negative_or_repeated_rates_is_a_one_line_error(grid):
    with pytest.raises(SystemExit, match="distinct positive learning rates"):
        compare.main(["--task", "shapes-caption", "--sweep", grid])


def test_a_method_grid_replaces_the_common_one_for_that_method_only():
    def rates(*argv):
        args = compare.parse_args(["--task", "shapes-sqa-likelihood", *argv])
        args.sweep = compare.sweep_grids(args.sweep, ["excitor", "lora", "prefix"])
        return {method: compare.candidate_rates(args, method) for method in ("excitor", "lora", "prefix")}

    assert rates("--sweep", "1e-3,2e-3", "--sweep", "lora=5e-4,1e-3") == {
        "excitor": [1e-3, 2e-3], "lora": [5e-4, 1e-3], "prefix": [1e-3, 2e-3]}
    preset = compare.LEARNING_RATES["shapes-sqa-likelihood"]
    assert rates("--sweep", "lora=5e-4,1e-3", "--lr", "prefix=3e-3") == {
        "excitor": [preset["excitor"]], "lora": [5e-4, 1e-3], "prefix": [3e-3]}


@pytest.mark.parametrize(("sweep", "message"), [
    (["lorra=1e-3,2e-3"], "unknown method 'lorra'"),
    (["1e-3,2e-3", "2e-3,4e-3"], "every method two grids"),
    (["lora=1e-3,2e-3", "lora=4e-3"], "lora two grids"),
    (["lora=1e-3,1e-3"], "distinct positive learning rates"),
])
def test_a_bad_method_grid_is_a_one_line_error(sweep, message):
    with pytest.raises(SystemExit, match=message):
        compare.main(["--task", "shapes-caption", *[arg for grid in sweep for arg in ("--sweep", grid)]])


def test_an_unknown_method_is_a_one_line_error():
    with pytest.raises(SystemExit, match="unknown method"):
        compare.main(["--task", "shapes-caption", "--methods", "excitor,lorra"])


def test_the_likelihood_preset_runs_the_second_protocol_and_says_so(assets, tmp_path):
    caption_only = {"data.train_annotations", "data.image_root"}
    overrides = tiny_overrides(assets)
    pairs = [(flag, value) for flag, value in zip(overrides[::2], overrides[1::2])
             if value.split("=")[0] not in caption_only]
    argv = ["--task", "shapes-sqa-likelihood", "--methods", "excitor", "--steps", "2", "--out", str(tmp_path),
            "--gen-prompts", "2", "--gen-tokens", "2", "--override", f"data.root={assets / 'shapes' / 'scienceqa'}",
            "--override", "data.max_length=256", *[item for pair in pairs for item in pair]]
    results = compare.main(argv)
    assert "data.prompt_format=QCM-option" in results["overrides"]
    (row,) = results["rows"]
    assert "likelihood" in row["protocol"] and "Avg" in row["image"] and "IMG" in row["blind"]
    assert "option likelihood" in (tmp_path / "compare.md").read_text().splitlines()[0]
