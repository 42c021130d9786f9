"""The option-likelihood protocol: scores equal the unmodified model's own log-probabilities, computed one
sequence at a time without padding, and the report says which protocol made it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data.collate import Collator
from data.prompts import scienceqa_example
from eval.scienceqa_likelihood import PROTOCOL, evaluate_likelihood, option_log_likelihoods, rank_options
from mm_excitor import ExcitorConfig
from mm_excitor.methods.excitor import MultimodalExcitor
from mm_excitor.vision import VisionEncoder
from tests.tiny_models import tiny_model, tiny_tokenizer, tiny_vision_config

PROBLEMS = {
    "1": {"question": "what colour is the circle ?", "hint": "", "choices": ["red", "green blue", "yellow"],
          "answer": 1, "image": "image.png", "subject": "natural science", "grade": "grade2", "topic": "colours",
          "split": "test"},
    "2": {"question": "how many squares ?", "hint": "the image is a red square", "choices": ["two", "a"],
          "answer": 0, "image": None, "subject": "natural science", "grade": "grade8", "topic": "counting",
          "split": "test"},
    "3": {"question": "which is left ?", "hint": "", "choices": ["left", "right", "a small triangle", "no"],
          "answer": 3, "image": "image.png", "subject": "social science", "grade": "grade5", "topic": "position",
          "split": "test"},
}


def _items() -> list[dict]:
    images = torch.randn(len(PROBLEMS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    items = []
    for (pid, p), image in zip(PROBLEMS.items(), images):
        prompt, _ = scienceqa_example(p["question"], p["hint"], p["choices"], p["answer"])
        has_image = p["image"] is not None
        items.append({"prompt": prompt, **({"image": image} if has_image else {}), "has_image": has_image,
                      "meta": {"pid": pid}})
    return items


COLLATOR = Collator(tiny_tokenizer(), 256, blank={"image": torch.zeros(3, 32, 32)})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    vision = VisionEncoder(tiny_vision_config(tmp_path_factory.mktemp("vit")))
    config = ExcitorConfig(num_layers=4, num_prompts=4, rank=8, visual_prompt_mode="concat")
    return MultimodalExcitor(tiny_model(seed=3), tiny_tokenizer(), config, vision).eval()


def _reference(problem: dict) -> list[float]:
    """log P(' option' + EOS | prompt) from a fresh unmodified model, each sequence alone (gates are zero, so the
    Excitor model must give exactly this whatever the image)."""
    base, tokenizer = tiny_model(seed=3), tiny_tokenizer()
    out = []
    for j, choice in enumerate(problem["choices"]):
        prompt, target = scienceqa_example(problem["question"], problem["hint"], problem["choices"], j,
                                           fmt="QCM-option")
        assert target == f" {choice}"
        prompt_ids = tokenizer(prompt)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + target_ids])
        with torch.no_grad():
            logp = torch.log_softmax(base(input_ids=ids).logits[0, :-1].double(), -1)
        out.append(sum(logp[len(prompt_ids) - 1 + k, t].item() for k, t in enumerate(target_ids)))
    return out


@pytest.mark.parametrize("batch_size", [1, 4])
def test_scores_are_the_unmodified_models_log_likelihoods_whatever_the_batching(model, batch_size: int) -> None:
    scores = option_log_likelihoods(model, _items(), COLLATOR, PROBLEMS, batch_size=batch_size)
    assert list(scores) == list(PROBLEMS)
    for pid, problem in PROBLEMS.items():
        assert scores[pid] == pytest.approx(_reference(problem), abs=1e-4), pid


def test_the_best_scored_option_wins_and_ties_go_to_the_first() -> None:
    assert rank_options({"1": [-3.0, -1.0, -2.0], "2": [-1.0, -1.0], "3": [-9.0, -8.0, -7.0, -0.5]}) == {
        "1": 1, "2": 0, "3": 3}


def test_report_names_the_protocol_and_scores_the_official_breakdown(model, tmp_path: Path) -> None:
    problems_path = tmp_path / "problems.json"
    problems_path.write_text(json.dumps(PROBLEMS))
    scores = evaluate_likelihood(model, _items(), COLLATOR, problems_path, tmp_path / "out", split="test",
                                 batch_size=5)
    expected = {pid: max(range(len(p["choices"])), key=_reference(p).__getitem__) for pid, p in PROBLEMS.items()}
    right = sum(expected[pid] == p["answer"] for pid, p in PROBLEMS.items())
    assert scores.categories["Avg"].correct == right and scores.categories["Avg"].n == 3
    assert json.loads((tmp_path / "out" / "scienceqa_results.json").read_text())["results"] == expected
    report = json.loads((tmp_path / "out" / "scienceqa_scores.json").read_text())
    assert report["decoding"]["protocol"] == PROTOCOL and "not the official" in PROTOCOL
    assert PROTOCOL in (tmp_path / "out" / "scienceqa_scores.md").read_text()
    rows = [json.loads(line) for line in (tmp_path / "out" / "option_log_likelihoods.jsonl").read_text().splitlines()]
    assert [len(r["log_likelihoods"]) for r in rows] == [3, 2, 4]


def test_the_image_reaches_the_scores(tmp_path: Path) -> None:
    vision = VisionEncoder(tiny_vision_config(tmp_path))
    config = ExcitorConfig(num_layers=4, num_prompts=4, rank=8, visual_prompt_mode="concat")
    model = MultimodalExcitor(tiny_model(seed=3), tiny_tokenizer(), config, vision).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gate"):
                parameter.fill_(5.0)
    items = _items()
    seeing = option_log_likelihoods(model, items, COLLATOR, PROBLEMS, batch_size=4)
    blind = option_log_likelihoods(model, [{k: v for k, v in it.items() if k != "image"} | {"has_image": False}
                                           for it in items], COLLATOR, PROBLEMS, batch_size=4)
    assert seeing["2"] == pytest.approx(blind["2"])  # no image: nothing to remove
    for pid in ("1", "3"):
        assert max(abs(a - b) for a, b in zip(seeing[pid], blind[pid])) > 1e-4, pid
