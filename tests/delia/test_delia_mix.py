"""DELIA's mix (data/mix.py, applied by tasks.run.prepare_data): R x |task| text-only items next to every task item
once; they carry no image, so they train the prompt side of a method and never its visual projection."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from data.collate import Collator
from data.mix import DeliaMixConfig, MixedDataset, delia_count, delia_items
from data.text import IGNORE_INDEX
from tests.delia.helpers import write_samples
from tests.tiny_models import TINY_CACHE, tiny_method_model, tiny_tokenizer


class TaskItems(torch.utils.data.Dataset):
    """Multimodal task items with 5 x 8 visual tokens (the tiny models' feature-cache shape)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"prompt": "describe the image\nanswer :", "target": " a red circle",
                "visual_tokens": torch.full((TINY_CACHE["num_tokens"], TINY_CACHE["width"]), 0.5 + index),
                "has_image": True, "meta": {"image_id": index}}


@pytest.fixture
def samples(tmp_path):
    return write_samples(tmp_path / "samples.jsonl", 40)


@pytest.mark.parametrize("ratio, task, expected", [(0.0, 10, 0), (1.0, 10, 10), (2.0, 10, 20), (0.5, 7, 4),
                                                   (3.0, 13, 39)])
def test_the_mix_has_r_times_task_delia_items_and_every_task_item_once(samples, ratio, task, expected):
    config = DeliaMixConfig(samples=samples, ratio=ratio, seed=0)
    assert delia_count(config, task) == expected == round(ratio * task)
    mixed = MixedDataset(TaskItems(task), delia_items(config, task))
    items = [mixed[i] for i in range(len(mixed))]
    assert len(mixed) == task + expected
    task_ids = Counter(item["meta"]["image_id"] for item in items if "image_id" in item["meta"])
    assert task_ids == Counter(range(task))
    delia_ids = [item["meta"]["delia_id"] for item in items if "delia_id" in item["meta"]]
    assert len(delia_ids) == expected and len(set(delia_ids)) == expected  # drawn without replacement
    for item in items[task:]:
        assert item["has_image"] is False and "image" not in item and "visual_tokens" not in item
        assert item["prompt"].endswith("\nAnswer:") and item["target"].startswith(" ")


def test_r0_needs_no_file_and_a_short_file_is_an_error_naming_both_counts(tmp_path, samples):
    assert delia_items(DeliaMixConfig(samples=None, ratio=0.0), 64) == []
    assert delia_items(DeliaMixConfig(samples=str(tmp_path / "missing.jsonl"), ratio=0.0), 64) == []
    with pytest.raises(ValueError, match="names no self-sampled file"):
        delia_items(DeliaMixConfig(samples=None, ratio=1.0), 8)
    with pytest.raises(ValueError, match=r"samples.jsonl: 40 self-sampled records, but .* = 42 are needed"):
        delia_items(DeliaMixConfig(samples=samples, ratio=2.0), 21)
    with pytest.raises(ValueError, match="ratio must be >= 0"):
        DeliaMixConfig(ratio=-1.0)


def test_the_draw_is_reproducible_for_a_seed_and_differs_for_another(samples):
    def ids(seed: int) -> list[str]:
        return [item["meta"]["delia_id"] for item in delia_items(DeliaMixConfig(samples, 1.0, seed), 20)]

    assert ids(0) == ids(0)
    assert ids(0) != ids(1)
    assert delia_items(DeliaMixConfig(samples, 1.0, 3), 20) == delia_items(DeliaMixConfig(samples, 1.0, 3), 20)


def test_delia_items_are_image_free_rows_of_a_batch_with_an_answer_only_loss(samples):
    tokenizer = tiny_tokenizer()
    blank = {"visual_tokens": torch.zeros(TINY_CACHE["num_tokens"], TINY_CACHE["width"])}
    mixed = MixedDataset(TaskItems(2), delia_items(DeliaMixConfig(samples, 1.0), 2))
    batch = Collator(tokenizer, 64, blank=blank)([mixed[i] for i in range(4)])
    assert batch.inputs["has_image"].tolist() == [True, True, False, False]
    assert torch.all(batch.inputs["visual_tokens"][2:] == 0)
    for row in (2, 3):
        labels = batch.inputs["labels"][row]
        prompt = tokenizer(mixed[row]["prompt"], add_special_tokens=True)["input_ids"]
        assert torch.all(labels[:len(prompt)] == IGNORE_INDEX) and torch.any(labels[len(prompt):] != IGNORE_INDEX)


VISUAL_SIDE = {"excitor": ("projection.", "visual_offset"), "lora": ("projector.",),
               "llama_adapter": ("projection.",), "prefix": ("projector.",)}
PROMPT_SIDE = {"excitor": ("k_proj.prompts", "k_proj.gate"), "lora": ("lora_",),
               "llama_adapter": ("adaption_prompts.prompts", "adaption_prompts.gate"), "prefix": ()}


@pytest.mark.parametrize("method", sorted(VISUAL_SIDE))
def test_a_delia_only_batch_trains_the_prompt_side_and_never_the_visual_projection(samples, method):
    model = tiny_method_model(method).train()
    with torch.no_grad():  # off the zero-init gate, so the prompts themselves get a gradient
        for name, param in model.named_parameters():
            if name.endswith(("k_proj.gate", "adaption_prompts.gate")):
                param.fill_(0.5)
    blank = {"visual_tokens": torch.zeros(TINY_CACHE["num_tokens"], TINY_CACHE["width"])}
    collator = Collator(tiny_tokenizer(), 64, blank=blank)

    def gradients(items: list[dict]) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        batch = collator(items)
        model(**batch.inputs, num_items_in_batch=batch.num_label_tokens).loss.backward()
        return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()
                if p.requires_grad}

    def norm(grads: dict[str, torch.Tensor], parts: tuple[str, ...]) -> float:
        chosen = [g for n, g in grads.items() if any(part in n for part in parts)]
        assert chosen, f"no trainable tensor matches {parts}"
        return float(sum(g.abs().sum() for g in chosen))

    delia = gradients(delia_items(DeliaMixConfig(samples, 1.0), 4))
    assert norm(delia, VISUAL_SIDE[method]) == 0.0
    if PROMPT_SIDE[method]:
        assert norm(delia, PROMPT_SIDE[method]) > 0.0
    else:  # a projector-only method has nothing that text-only items could train
        assert all(float(g.abs().sum()) == 0.0 for g in delia.values())
    task = gradients([TaskItems(4)[i] for i in range(4)])  # the control: with images the projection learns
    assert norm(task, VISUAL_SIDE[method]) > 0.0
