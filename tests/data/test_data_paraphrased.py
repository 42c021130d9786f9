"""The task instruction paraphrased per example (data.datasets.ParaphrasedDataset, applied to every task by
tasks.run.prepare_data): training paraphrases in training, only unseen ones in evaluation."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from data.datasets import ParaphrasedDataset
from data.mix import DeliaMixConfig
from data.paraphrases import ParaphraseConfig, load_paraphrases
from data.shapes_json import shapes_json_example
from tasks.base import TaskData
from tasks.run import prepare_data

SET = load_paraphrases("shapes_json")


def items(n: int, instruction: str = SET.canonical) -> list[dict]:
    out = []
    for i in range(n):
        prompt, target = shapes_json_example(instruction, "red", "circle")
        out.append({"prompt": prompt, "target": target, "has_image": True, "meta": {"image_id": 100 + i}})
    return out


def instruction_of(item: dict) -> str:
    assert item["prompt"].endswith("\nAnswer:")
    return item["prompt"].removesuffix("\nAnswer:")


def test_training_items_get_training_paraphrases_and_eval_items_only_unseen_ones():
    train = ParaphrasedDataset(items(200), SET, "train", "image_id")
    evaluation = ParaphrasedDataset(items(200), SET, "eval", "image_id")
    seen = {instruction_of(train[i]) for i in range(len(train))}
    unseen = {instruction_of(evaluation[i]) for i in range(len(evaluation))}
    assert seen <= set(SET.train) and len(seen) > len(SET.train) // 2  # varied, per example
    assert unseen <= set(SET.eval) and len(unseen) > len(SET.eval) // 2
    assert seen.isdisjoint(unseen)
    assert [train[i] for i in range(5)] == [train[i] for i in range(5)]  # fixed per example
    assert train[3]["target"] == items(4)[3]["target"] and train[3]["meta"] == {"image_id": 103}


def test_a_prompt_without_the_canonical_instruction_is_an_error_when_the_set_is_built():
    with pytest.raises(ValueError, match="does not contain its canonical instruction"):
        ParaphrasedDataset(items(1, "Name the object."), SET, "train", "image_id")


@pytest.mark.parametrize("mode", ["unseen", "canonical"])
def test_prepare_data_paraphrases_every_split_as_configured(mode):
    config = SimpleNamespace(data=SimpleNamespace(paraphrases=ParaphraseConfig("shapes_json", mode),
                                                  delia=DeliaMixConfig()))
    data = TaskData(items(50), items(50), items(50), blank={}, identity={"train_items": 50})
    prepared = prepare_data(SimpleNamespace(id_key="image_id"), config, data)
    assert {instruction_of(prepared.train[i]) for i in range(50)} <= set(SET.train)
    for split in (prepared.val, prepared.eval):
        texts = {instruction_of(split[i]) for i in range(50)}
        assert texts <= set(SET.eval) if mode == "unseen" else texts == {SET.canonical}
    assert prepared.identity == {"train_items": 50}  # R = 0: the task data alone


def test_an_unknown_eval_choice_is_refused():
    with pytest.raises(ValueError, match="paraphrases.eval must be one of"):
        ParaphraseConfig("shapes_json", "seen")
