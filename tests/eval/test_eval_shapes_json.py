"""The shapes_json scorer on hand-made outputs: format validity, accuracy, colour and shape."""
from __future__ import annotations

import json

import pytest

from eval.shapes_json import parse_answer, read_answers, score_answers, score_answers_file, write_answers

TRUTH = {1: ("red", "circle"), 2: ("blue", "square"), 3: ("green", "star"), 4: ("yellow", "triangle"),
         5: ("purple", "circle"), 6: ("orange", "square"), 7: ("red", "star"), 8: ("blue", "circle")}
TEXTS = {
    1: '{"colour": "red", "shape": "circle"}',              # valid, right
    2: '  {"shape": "square", "colour": "Blue"}\n',         # valid (key order, case, whitespace), right
    3: '{"colour": "green", "shape": "circle"}',            # valid, colour right, shape wrong
    4: '{"colour": "red", "shape": "triangle"}',            # valid, shape right
    5: '{"color": "purple", "shape": "circle"}',            # wrong key: invalid
    6: '{"colour": "orange", "shape": "square", "size": "large"}',  # extra key: invalid
    7: 'The object is {"colour": "red", "shape": "star"}',  # text around the JSON: invalid
    8: '{"colour": "blue", "shape": "circle"',              # broken JSON: invalid
}


def test_scores_of_hand_made_outputs():
    scores = score_answers(TEXTS, TRUTH)
    assert scores.n == 8
    assert scores.metrics() == {"valid": 50.0, "accuracy": 25.0, "colour": 37.5, "shape": 37.5}


@pytest.mark.parametrize("text", ['["red", "circle"]', '{"colour": 1, "shape": "circle"}', "", "null",
                                  '{"colour": "red"}'])
def test_not_an_object_with_exactly_the_two_string_keys_is_invalid(text):
    assert parse_answer(text) is None


def test_missing_answers_are_refused_unless_a_subset_is_allowed():
    with pytest.raises(ValueError, match="1 of 8 images have no answer"):
        score_answers({k: v for k, v in TEXTS.items() if k != 8}, TRUTH)
    assert score_answers({1: TEXTS[1]}, TRUTH, allow_subset=True).accuracy == 100.0
    with pytest.raises(ValueError, match="outside the split"):
        score_answers({**TEXTS, 99: "{}"}, TRUTH)


def test_the_answer_file_round_trips_and_the_report_is_written(tmp_path):
    records = [{"index": i, "id": k, "prompt": "p", "text": t} for i, (k, t) in enumerate(TEXTS.items())]
    write_answers(records, tmp_path / "answers.jsonl")
    assert read_answers(tmp_path / "answers.jsonl") == TEXTS
    scores = score_answers_file(tmp_path / "answers.jsonl", TRUTH, tmp_path)
    report = json.loads((tmp_path / "shapes_json_scores.json").read_text())
    assert report["accuracy"] == scores.accuracy == 25.0 and report["subset"] is False
