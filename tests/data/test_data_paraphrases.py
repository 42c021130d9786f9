"""Shipped instruction paraphrases: disjoint train/eval sets, schema kept, a deterministic choice per example."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.errors import DataError
from data.paraphrases import PARAPHRASE_DIR, load_paraphrases, paraphrase_sets

ROOT = Path(__file__).resolve().parents[2]


def words(text: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def test_shipped_sets_are_disjoint_and_sized() -> None:
    assert paraphrase_sets() == ["caption", "shapes_json"]
    for name in paraphrase_sets():
        raw = json.loads((PARAPHRASE_DIR / f"paraphrases_{name}.json").read_text())
        paraphrases = load_paraphrases(name)
        assert (len(paraphrases.train), len(paraphrases.eval)) == (24, 12)
        assert {words(t) for t in raw["train"]}.isdisjoint(words(t) for t in raw["eval"])
        assert len({words(t) for t in raw["train"] + raw["eval"]}) == 36
        assert paraphrases.canonical == raw["train"][0]


def test_caption_set_starts_from_the_caption_prompt() -> None:
    from data.prompts import CAPTION_PROMPT

    assert CAPTION_PROMPT.startswith(load_paraphrases("caption").canonical + "\n")


def test_every_json_paraphrase_names_the_schema() -> None:
    paraphrases = load_paraphrases("shapes_json")
    for text in paraphrases.train + paraphrases.eval:
        assert '"colour"' in text and '"shape"' in text and "JSON" in text


def test_choice_is_deterministic_per_example_and_split() -> None:
    paraphrases = load_paraphrases("caption")
    picks = [paraphrases.choose(i) for i in range(2000)]
    assert picks == [paraphrases.choose(i) for i in range(2000)]
    assert set(picks) == set(paraphrases.train)  # every training phrasing gets used
    assert {paraphrases.choose(f"img-{i}", "eval") for i in range(500)} == set(paraphrases.eval)
    assert [paraphrases.choose(i, seed=1) for i in range(50)] != picks[:50]
    assert paraphrases.choose(7) == paraphrases.choose("7")


def test_choice_does_not_depend_on_the_process() -> None:
    code = "from data.paraphrases import load_paraphrases as l; print([l('shapes_json').choose(i) for i in range(20)])"
    outputs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([load_paraphrases("shapes_json").choose(i) for i in range(20)])


@pytest.mark.parametrize(("change", "problem"), [
    ({"eval": ["Describe the image in one sentence!"]}, "train and eval share"),
    ({"train": ["a", "A."]}, "repeats"),
    ({"must_contain": ["JSON"]}, "lacks ['JSON']"),
    ({"canonical": "Say something."}, "canonical instruction is not a training paraphrase"),
    ({"eval": []}, "the eval split is empty"),
    ({"train": "one"}, "train: expected a list of non-empty strings"),
])
def test_bad_sets_are_refused_naming_the_file(tmp_path: Path, change: dict, problem: str) -> None:
    data = json.loads((PARAPHRASE_DIR / "paraphrases_caption.json").read_text())
    if "train" in change and isinstance(change["train"], list):
        change = {**change, "canonical": "a"}
    data.update(change)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as error:
        load_paraphrases(path)
    assert str(error.value).startswith(str(path)) and problem in str(error.value)


def test_unknown_set_lists_the_shipped_ones() -> None:
    with pytest.raises(DataError, match=r"no paraphrase set 'vqa'; shipped sets: \['caption', 'shapes_json'\]"):
        load_paraphrases("vqa")
