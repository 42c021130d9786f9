"""ScienceQA loading, splits, prompt formats (full strings) and bad input, on the bundled samples."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from data.errors import DataError
from data.prompts import scienceqa_example
from data.scienceqa import SPLITS, build_example, load_scienceqa, problem_meta

SQA = Path(__file__).resolve().parents[2] / "data" / "samples" / "scienceqa"


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _problem(pid: str, split: str = "train"):
    return next(p for p in load_scienceqa(SQA, split) if p.pid == pid)


@pytest.mark.parametrize("split", SPLITS)
def test_every_split_name_loads_in_file_order(split: str):
    expected = _read(SQA / "pid_splits.json")[split]
    problems = load_scienceqa(SQA, split)
    assert [p.pid for p in problems] == expected


def test_mini_and_combined_splits_find_images_under_the_problem_split():
    for split in ("trainval", "minitrain", "minival", "minitest"):
        for p in load_scienceqa(SQA, split):
            if p.has_image:
                assert p.image_key == f"{p.split}/{p.pid}/image.png"
                assert p.image_path == SQA / "images" / p.image_key and p.image_path.is_file()


def test_breakdown_fields_and_flags():
    by_pid = {p.pid: p for p in load_scienceqa(SQA, "trainval") + load_scienceqa(SQA, "test")}
    assert (by_pid["1"].has_image, by_pid["1"].has_text) == (True, False)  # image only
    assert (by_pid["2"].has_image, by_pid["2"].has_text) == (True, True)  # both: counts in TXT and IMG
    assert (by_pid["3"].has_image, by_pid["3"].has_text) == (False, True)  # hint only
    assert (by_pid["4"].has_image, by_pid["4"].has_text) == (False, False)  # neither (NO)
    assert {p.subject for p in by_pid.values()} == {"natural science", "social science", "language science"}
    meta = problem_meta(by_pid["7"])
    assert meta == {"pid": "7", "answer": 1, "answer_letter": "B", "n_choices": 2, "subject": "social science",
                    "grade": "grade3", "topic": "economics", "category": "Goods and services", "has_text": False,
                    "has_image": True, "split": "test"}


def test_qcm_a_prompt_with_na_context():
    prompt, target = build_example(_problem("4"))
    assert prompt == ("Question: Select the elementary substance.\n"
                      "Context: N/A\n"
                      "Options: (A) water (H2O) (B) ozone (O3) (C) hydrogen peroxide (H2O2)\n"
                      "Answer:")
    assert target == " The answer is B."


def test_qcm_a_prompt_with_hint_context():
    prompt, target = build_example(_problem("3"), "QCM-A")
    assert prompt + target == (
        "Question: Which change of state happened to the water?\n"
        "Context: Maya put a glass of water in the freezer. After two hours, the water had turned solid.\n"
        "Options: (A) melting (B) freezing (C) boiling\n"
        "Answer: The answer is B.")


def test_cqm_a_prompt():
    prompt, target = build_example(_problem("2"), "CQM-A")
    assert prompt == ("Context: Two magnets are placed as shown.\n\nHint: Magnets that attract pull together. "
                      "Magnets that repel push apart.\n"
                      "Question: Will these magnets attract or repel each other?\n"
                      "Options: (A) repel (B) attract\n"
                      "Answer:")
    assert target == " The answer is A."


def test_qcm_lea_target_has_lecture_solution_and_escaped_newlines():
    prompt, target = build_example(_problem("7", "test"), "QCM-LEA")
    assert prompt == ("Question: Is a cup of coffee a good or a service?\nContext: N/A\n"
                      "Options: (A) a service (B) a good\nAnswer:")
    assert target == (
        " Everything you can buy is either a good or a service.\\nA good is something you can touch or hold in "
        "your hands.\\nA service is a job you pay someone else to do. To decide whether a cup of coffee is a good "
        "or a service, ask these questions:\\nIs a cup of coffee something you can touch? Yes.\\nIs a cup of "
        "coffee a job you might pay someone else to do? No.\\nSo, a cup of coffee is a good. The answer is B.")


def test_lea_with_empty_lecture_collapses_the_double_space():
    p = dataclasses.replace(_problem("4"), lecture="")
    assert build_example(p, "QCM-LEA")[1] == (
        " Ozone (O3) is made of oxygen atoms only. So, ozone is an elementary substance. The answer is B.")


def test_qcm_option_keeps_the_qcm_prompt_and_answers_with_the_option_text():
    problem = _problem("7", "test")
    prompt, target = build_example(problem, "QCM-option")
    assert prompt == build_example(problem, "QCM-A")[0]
    assert target == " a good"


def test_unknown_prompt_format():
    with pytest.raises(ValueError, match="unknown ScienceQA prompt format 'QCM-X'"):
        scienceqa_example("q", "", ["a", "b"], 0, fmt="QCM-X")


# ------------------------------------------------------------------------------------------------------ bad input


def test_unknown_split_names_the_file_and_lists_the_splits():
    with pytest.raises(DataError) as e:
        load_scienceqa(SQA, "testmini")
    assert str(e.value).startswith(f"{SQA / 'pid_splits.json'}: split 'testmini': no such split")
    assert "minitest" in str(e.value)


def test_answer_index_out_of_range_names_file_and_pid(sqa_copy: Path):
    problems = _read(sqa_copy / "problems.json")
    problems["3"]["answer"] = 3
    _write(sqa_copy / "problems.json", problems)
    with pytest.raises(DataError) as e:
        load_scienceqa(sqa_copy, "train")
    assert str(e.value) == f"{sqa_copy / 'problems.json'}: pid 3: answer index 3 out of range for 3 choices"


@pytest.mark.parametrize("field", ["question", "choices", "answer", "hint", "image", "subject", "grade", "split"])
def test_missing_field_names_file_and_pid(sqa_copy: Path, field: str):
    problems = _read(sqa_copy / "problems.json")
    del problems["2"][field]
    _write(sqa_copy / "problems.json", problems)
    with pytest.raises(DataError) as e:
        load_scienceqa(sqa_copy, "minitrain")
    assert str(e.value) == f"{sqa_copy / 'problems.json'}: pid 2: missing field '{field}'"


@pytest.mark.parametrize("split, pid, message", [
    ("val", "777", r"pid_splits\.json: split 'val' pid 777: pid is not in problems\.json"),
    ("minitest", "1", r"problems\.json: pid 1: listed in split 'minitest'.*own split is 'train'"),
], ids=["pid missing from problems", "problem in the wrong split"])
def test_split_lists_a_pid_it_cannot_hold(sqa_copy: Path, split: str, pid: str, message: str):
    splits = _read(sqa_copy / "pid_splits.json")
    splits[split].append(pid)
    _write(sqa_copy / "pid_splits.json", splits)
    with pytest.raises(DataError, match=message):
        load_scienceqa(sqa_copy, split)


def test_malformed_problems_json(sqa_copy: Path):
    (sqa_copy / "problems.json").write_text('{"1": {"question": "x",}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"problems\.json: not valid JSON \(line 1 column \d+"):
        load_scienceqa(sqa_copy, "train")


def test_bad_choices_and_answer_type(sqa_copy: Path):
    problems = _read(sqa_copy / "problems.json")
    problems["1"]["answer"] = "2"
    _write(sqa_copy / "problems.json", problems)
    with pytest.raises(DataError, match="pid 1: 'answer' must be an integer index"):
        load_scienceqa(sqa_copy, "train")
    problems["1"]["answer"], problems["1"]["choices"] = 0, ["only one"]
    _write(sqa_copy / "problems.json", problems)
    with pytest.raises(DataError, match="pid 1: 'choices' must be a list of at least 2 strings"):
        load_scienceqa(sqa_copy, "train")
