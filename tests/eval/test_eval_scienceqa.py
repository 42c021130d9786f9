"""ScienceQA scoring against a hand-computed fixture, answer extraction, and the official results shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.scienceqa import main as score_or_generate
from eval.scienceqa_metrics import (
    ScienceQAInputError, extract_answer, format_official, score_scienceqa, write_official_results,
)
from mm_excitor.cli import run_cli


def scienceqa_main(argv: list[str]) -> int:
    """`python -m eval.scienceqa ...`: its exit status."""
    return run_cli(score_or_generate, argv)


def _p(subject: str, hint: str, image: str | None, grade: int, topic: str, n: int, answer: int,
       split: str = "test") -> dict:
    return {"question": "?", "choices": [f"c{k}" for k in range(n)], "answer": answer, "hint": hint,
            "image": image, "grade": f"grade{grade}", "subject": f"{subject} science", "topic": topic, "split": split}


# pid: problem, generated text, parsed index. Hand-computed categories in the comments.
FIXTURE = {
    "1": (_p("natural", "", None, 2, "biology", 3, 0), "A", 0),  # NAT NO G1-6 right
    "2": (_p("natural", "ctx", "image.png", 7, "physics", 2, 1), "The answer is B.", 1),  # NAT TXT IMG G7-12 right
    "3": (_p("natural", "", "image.png", 11, "physics", 4, 2), "(A) the left one", 0),  # NAT IMG G7-12 wrong
    "4": (_p("social", "ctx", None, 4, "geography", 2, 0), "I am not sure.", -1),  # SOC TXT G1-6 unparsed
    "5": (_p("social", "", "image.png", 5, "geography", 4, 3), "D. because", 3),  # SOC IMG G1-6 right
    "6": (_p("social", "ctx", "image.png", 12, "economics", 3, 1), "The answer is C.", 2),  # SOC TXT IMG G7-12 wrong
    "7": (_p("language", "", None, 3, "writing-strategies", 2, 1), "B", 1),  # LAN NO G1-6 right
    "8": (_p("language", "ctx", None, 8, "grammar", 5, 4), "The answer is E", 4),  # LAN TXT G7-12 right
    "9": (_p("language", "", None, 10, "grammar", 3, 0), "The answer is A. The answer is B.", -1),  # LAN NO G7-12
    "10": (_p("natural", "ctx", "image.png", 1, "biology", 2, 0), "A.", 0),  # NAT TXT IMG G1-6 right
}
PROBLEMS = {pid: p for pid, (p, _, _) in FIXTURE.items()}
PROBLEMS["11"] = _p("natural", "", None, 2, "biology", 2, 0, split="val")
PROBLEMS["12"] = _p("social", "", None, 9, "economics", 2, 1, split="train")
PREDICTIONS = {pid: idx for pid, (_, _, idx) in FIXTURE.items()}
EXPECTED = {  # (correct, n)
    "Avg": (6, 10), "NAT": (3, 4), "SOC": (1, 3), "LAN": (2, 3), "TXT": (3, 5), "IMG": (3, 5), "NO": (2, 3),
    "G1-6": (4, 5), "G7-12": (2, 5),
}
EXPECTED_TOPICS = {"biology": (2, 2), "economics": (0, 1), "geography": (1, 2), "grammar": (1, 2),
                   "physics": (1, 2), "writing-strategies": (1, 1)}


def test_hand_computed_categories_topics_and_unparsed() -> None:
    scores = score_scienceqa(PREDICTIONS, PROBLEMS, split="test")
    assert {k: (a.correct, a.n) for k, a in scores.categories.items()} == EXPECTED
    assert {k: (a.correct, a.n) for k, a in scores.topics.items()} == EXPECTED_TOPICS
    assert scores.categories["Avg"].percent == 60.0 and scores.categories["SOC"].percent == pytest.approx(100 / 3)
    assert (scores.n_unparsed, scores.n_scored, scores.n_split, scores.subset) == (2, 10, 10, False)
    # questions 2, 6 and 10 have a hint and an image: they are in TXT and in IMG, so those overlap
    assert scores.categories["TXT"].n + scores.categories["IMG"].n + scores.categories["NO"].n == 13


def test_official_printout() -> None:
    assert format_official(score_scienceqa(PREDICTIONS, PROBLEMS)).splitlines() == [
        "natural: \t75.00", "social: \t33.33", "language: \t66.67", "has_text: \t60.00", "has_image: \t60.00",
        "no_context: \t66.67", "grade_1_6: \t80.00", "grade_7_12: \t40.00", "average: \t60.00",
        "& 75.00 & 33.33 & 66.67 & 60.00 & 60.00 & 66.67 & 80.00 & 40.00 & 60.00 \\\\",
    ]


@pytest.mark.parametrize(("text", "n", "index"), [
    ("A", 3, 0), (" B \n", 3, 1), ("D", 3, -1), ("a", 2, -1), ("", 4, -1),
    ("A.", 2, 0), ("A. West Virginia", 2, 0), ("(B) Ohio", 2, 1), ("(B).", 2, 1), ("E. foo", 4, -1),
    ("A dog", 2, -1), ("A.B", 2, -1), ("C) foo", 3, -1),
    ("The answer is C.", 3, 2), ("The answer is (C).", 3, 2), ("The answer is C", 3, 2),
    ("Lecture... Solution... The answer is B.", 2, 1), ("The answer is E.", 4, -1),
    ("The answer is Alaska.", 3, -1), ("The answer is A. The answer is A.", 2, -1), ("the answer is a.", 2, -1),
])
def test_extract_answer(text: str, n: int, index: int) -> None:
    assert extract_answer(text, n) == index


def test_fixture_texts_parse_to_the_fixture_indices() -> None:
    for pid, (problem, text, idx) in FIXTURE.items():
        assert extract_answer(text, len(problem["choices"])) == idx, pid


def test_missing_unknown_and_invalid_predictions_are_errors() -> None:
    partial = {pid: i for pid, i in PREDICTIONS.items() if pid != "9"}
    with pytest.raises(ScienceQAInputError, match=r"1 of 10 test questions have no prediction: 9\b"):
        score_scienceqa(partial, PROBLEMS)
    subset = score_scienceqa(partial, PROBLEMS, allow_subset=True)
    assert (subset.subset, subset.coverage, subset.n_unparsed) == (True, "9/10", 1)
    assert (subset.categories["Avg"].correct, subset.categories["Avg"].n) == (6, 9)
    with pytest.raises(ScienceQAInputError, match=r"not in the test split: 11, 12"):
        score_scienceqa({**PREDICTIONS, "11": 0, "12": 1}, PROBLEMS)
    with pytest.raises(ScienceQAInputError, match=r"not an option index.*2: 5"):
        score_scienceqa({**PREDICTIONS, "2": 5}, PROBLEMS)
    only_val = score_scienceqa({"11": 0}, PROBLEMS, split="val")
    assert only_val.categories["SOC"].percent is None and only_val.categories["Avg"].percent == 100.0


def test_official_results_shape(tmp_path: Path) -> None:
    write_official_results(PREDICTIONS, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"results": PREDICTIONS}


@pytest.fixture
def problems_file(tmp_path: Path) -> Path:
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(PROBLEMS))
    return path


def test_cli_scores_generations_and_official_results_alike(tmp_path: Path, problems_file: Path, capsys) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": pid, "prompt": "p", "text": t}) + "\n"
                               for pid, (_, t, _) in FIXTURE.items()))
    (tmp_path / "answers.meta.json").write_text(json.dumps({"decoding": {"batch_size": 4, "num_beams": 1}}))
    out = tmp_path / "out"
    argv = ["score", "--problems", str(problems_file), "--split", "test", "--out", str(out)]
    assert scienceqa_main([*argv, "--predictions", str(answers)]) == 0
    printed = capsys.readouterr().out
    assert "Full split: 10/10 questions" in printed and "average: \t60.00" in printed
    assert "unparsed answers (counted wrong): 2" in printed
    official = json.loads((out / "scienceqa_results.json").read_text())
    assert official == {"results": PREDICTIONS}
    unparsed = [json.loads(line) for line in (out / "scienceqa_unparsed.jsonl").read_text().splitlines()]
    assert unparsed == [{"question_id": "4", "text": "I am not sure."},
                        {"question_id": "9", "text": "The answer is A. The answer is B."}]
    report = json.loads((out / "scienceqa_scores.json").read_text())
    assert report["counts"]["TXT"] == {"correct": 3, "n": 5} and report["n_unparsed"] == 2
    assert report["decoding"] == {"batch_size": 4, "num_beams": 1} and report["subset"] is False
    markdown = (out / "scienceqa_scores.md").read_text()
    assert "| Avg | NAT | SOC | LAN | TXT | IMG | NO | G1-6 | G7-12 |" in markdown
    assert "| grammar | 50.00 | 1/2 |" in markdown

    out2 = tmp_path / "out2"  # scoring the official results file gives the same numbers
    assert scienceqa_main([*argv[:-1], str(out2), "--predictions", str(out / "scienceqa_results.json")]) == 0
    assert json.loads((out2 / "scienceqa_scores.json").read_text())["counts"] == report["counts"]


def test_cli_subset_is_refused_then_marked(tmp_path: Path, problems_file: Path, capsys) -> None:
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"results": {"1": 0, "2": 0}}))
    argv = ["score", "--problems", str(problems_file), "--predictions", str(partial), "--out", str(tmp_path / "o")]
    assert scienceqa_main(argv) == 2
    assert "--allow-subset" in capsys.readouterr().err
    assert scienceqa_main([*argv, "--allow-subset"]) == 0
    assert "SUBSET: 2/10 questions" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "scienceqa_results.json").read_text())["subset"].startswith("SUBSET: 2/10")
    assert (tmp_path / "o" / "scienceqa_scores.md").read_text().startswith("# ScienceQA test accuracy (SUBSET 2/10)")
    assert json.loads((tmp_path / "o" / "scienceqa_scores.json").read_text())["coverage"] == "2/10"


# ---------------------------------------------------------------------------- unparsed policy and split size


def _official_get_pred_idx(prediction: str, choices: list, options: list) -> int:
    """lupantech/ScienceQA models/run_gpt3.py, as published (the reference for --unparsed random)."""
    import random

    if prediction in options[:len(choices)]:
        return options.index(prediction)
    return random.choice(range(len(choices)))


def test_random_fallback_draws_as_the_official_scorer() -> None:
    import random

    options = ["A", "B", "C", "D", "E"]
    correct_by_seed = set()
    for seed in range(20):
        random.seed(seed)
        expected = {pid: _official_get_pred_idx("FAILED" if idx == -1 else options[idx], p["choices"], options)
                    for pid, (p, _, idx) in FIXTURE.items()}
        scores = score_scienceqa(PREDICTIONS, PROBLEMS, unparsed="random", seed=seed)
        assert scores.predictions == expected, seed
        right = sum(expected[pid] == PROBLEMS[pid]["answer"] for pid in expected)
        assert scores.categories["Avg"].correct == right and scores.n_unparsed == 2
        assert (scores.unparsed_policy, scores.seed) == ("random", seed)
        correct_by_seed.add(right)
    assert len(correct_by_seed) > 1  # the policy changes the number on this fixture
    wrong = score_scienceqa(PREDICTIONS, PROBLEMS)
    assert (wrong.unparsed_policy, wrong.seed, wrong.categories["Avg"].correct) == ("wrong", None, 6)
    assert wrong.predictions == PREDICTIONS


def _answers(tmp_path: Path, pids) -> Path:
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": pid, "prompt": "p", "text": FIXTURE[pid][1]}) + "\n"
                               for pid in pids))
    return answers


def test_cli_records_the_unparsed_policy(tmp_path: Path, problems_file: Path, capsys) -> None:
    argv = ["score", "--problems", str(problems_file), "--predictions", str(_answers(tmp_path, FIXTURE))]
    assert scienceqa_main([*argv, "--out", str(tmp_path / "w")]) == 0
    report = json.loads((tmp_path / "w" / "scienceqa_scores.json").read_text())
    assert report["unparsed"]["policy"] == "wrong" and report["unparsed"]["seed"] is None
    assert "run_gpt3.py picks a random option" in report["unparsed"]["note"]
    assert "count as wrong (LLaVA" in (tmp_path / "w" / "scienceqa_scores.md").read_text()
    capsys.readouterr()

    assert scienceqa_main([*argv, "--out", str(tmp_path / "r"), "--unparsed", "random", "--seed", "3"]) == 0
    assert "unparsed answers (a random option, seed 3): 2" in capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "scienceqa_scores.json").read_text())
    assert report["unparsed"]["policy"] == "random" and report["unparsed"]["seed"] == 3
    drawn = score_scienceqa(PREDICTIONS, PROBLEMS, unparsed="random", seed=3).predictions
    official = json.loads((tmp_path / "r" / "scienceqa_results.json").read_text())["results"]
    assert official == drawn and -1 not in official.values()
    assert "random option (random.Random(3)" in (tmp_path / "r" / "scienceqa_scores.md").read_text()


def _pid_splits(path: Path, test: list[str]) -> Path:
    path.write_text(json.dumps({"train": ["12"], "val": ["11"], "test": test, "minitest": ["1", "2"]}))
    return path


def test_truncated_problems_file_is_not_a_full_split(tmp_path: Path, capsys) -> None:
    """pid_splits.json next to problems.json gives the split's size; a problems.json without pid 10 is a subset."""
    truncated = {pid: p for pid, p in PROBLEMS.items() if pid != "10"}
    (tmp_path / "problems.json").write_text(json.dumps(truncated))
    _pid_splits(tmp_path / "pid_splits.json", list(FIXTURE))
    out = tmp_path / "out"
    argv = ["score", "--problems", str(tmp_path / "problems.json"), "--out", str(out),
            "--predictions", str(_answers(tmp_path, [pid for pid in FIXTURE if pid != "10"]))]
    assert scienceqa_main(argv) == 0
    captured = capsys.readouterr()
    assert "warning: problems.json holds 9 of the 10 test questions" in captured.err and "10" in captured.err
    assert "SUBSET: 9/10 questions" in captured.out and "Full split" not in captured.out
    report = json.loads((out / "scienceqa_scores.json").read_text())
    assert report["subset"] is True and report["coverage"] == "9/10"
    assert report["split_size"] == {"n": 10, "from": str(tmp_path / "pid_splits.json")}
    assert report["warnings"] and "9 of the 10" in report["warnings"][0]
    assert "**Warning: problems.json holds 9 of the 10" in (out / "scienceqa_scores.md").read_text()


def test_explicit_pid_splits_full_split_and_mini_splits(tmp_path: Path, problems_file: Path, capsys) -> None:
    splits = _pid_splits(tmp_path / "elsewhere.json", list(FIXTURE))
    argv = ["score", "--problems", str(problems_file), "--pid-splits", str(splits)]
    assert scienceqa_main([*argv, "--predictions", str(_answers(tmp_path, FIXTURE)), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "Full split: 10/10 questions" in captured.out and "warning" not in captured.err
    assert json.loads((tmp_path / "o" / "scienceqa_scores.json").read_text())["warnings"] == []
    assert scienceqa_main([*argv, "--split", "minitest", "--predictions", str(_answers(tmp_path, ["1", "2"])),
                           "--out", str(tmp_path / "m")]) == 0
    assert "Full split: 2/2 questions" in capsys.readouterr().out


def test_without_pid_splits_the_size_is_said_to_be_unchecked(tmp_path: Path, problems_file: Path, capsys) -> None:
    argv = ["score", "--problems", str(problems_file), "--predictions", str(_answers(tmp_path, FIXTURE)),
            "--out", str(tmp_path / "o")]
    assert scienceqa_main(argv) == 0
    assert "warning: no pid_splits.json given" in capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "scienceqa_scores.json").read_text())
    assert report["split_size"]["from"].startswith("problems.json split field")
