"""Prompt templates, tokenisation (loss on the answer only, counted truncation) and the batch collator."""

from __future__ import annotations

import pytest
import torch

from data.collate import Collator
from data.prompts import CAPTION_PROMPT, CaptionTemplate, caption_example
from data.text import IGNORE_INDEX, encode_example, encode_prompt, pad_id

PROMPT = "Describe the image in one sentence.\nCaption:"
TARGET = " A red coffee cup on a wooden table."


def _ids(tok, text, special):
    return tok(text, add_special_tokens=special)["input_ids"]


def test_caption_template():
    assert CAPTION_PROMPT == PROMPT
    assert caption_example("A cat on a sofa.") == (PROMPT, " A cat on a sofa.")
    with pytest.raises(ValueError, match="lacks"):
        CaptionTemplate(target="{text}")


@pytest.mark.parametrize("tok_name", ["tokenizer", "tokenizer_nobos"])
def test_labels_cover_exactly_the_target_and_eos(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    enc = encode_example(tok, PROMPT, TARGET, max_length=256)
    n_prompt = len(_ids(tok, PROMPT, True))
    assert enc.input_ids[:n_prompt] == _ids(tok, PROMPT, True) == encode_prompt(tok, PROMPT, 256).input_ids
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
    assert enc.input_ids[-1] == tok.eos_token_id
    assert tok.decode(enc.input_ids[n_prompt:-1]) == TARGET
    assert not enc.truncated
    if tok_name == "tokenizer":
        assert enc.input_ids[0] == tok.bos_token_id


def test_long_prompt_is_cut_from_the_left_after_bos_and_counted(tokenizer):
    prompt = "Lecture solution galaxies rocket astronaut " * 20 + PROMPT
    full = encode_example(tokenizer, prompt, TARGET, max_length=1000)
    n_target = len(_ids(tokenizer, TARGET, False)) + 1
    n_prompt = len(full.input_ids) - n_target
    keep = n_target + 3  # the target fits in half the budget, so only the prompt is cut
    enc = encode_example(tokenizer, prompt, TARGET, max_length=n_target + keep)
    assert len(enc.input_ids) == n_target + keep
    assert enc.prompt_tokens_cut == n_prompt - keep and enc.target_tokens_cut == 0 and enc.truncated
    assert enc.input_ids[0] == tokenizer.bos_token_id
    assert enc.input_ids[1:keep] == full.input_ids[n_prompt - keep + 1:n_prompt]  # the prompt's end survives
    assert enc.input_ids[keep:] == full.input_ids[n_prompt:]  # the whole answer + EOS survives
    gen = encode_prompt(tokenizer, prompt, max_length=keep)
    assert gen.input_ids == enc.input_ids[:keep] and gen.prompt_tokens_cut == enc.prompt_tokens_cut


def test_long_target_keeps_half_the_budget_for_the_prompt_and_is_never_dropped(tokenizer):
    target = " A red coffee cup on a wooden table." * 30
    enc = encode_example(tokenizer, PROMPT, target, max_length=20)
    n_prompt = len(_ids(tokenizer, PROMPT, True))
    assert n_prompt > 10 and len(enc.input_ids) == 20
    assert enc.labels.count(IGNORE_INDEX) == 10  # the prompt keeps max_length // 2 tokens
    assert enc.input_ids[-1] != tokenizer.eos_token_id  # unfinished answer: no EOS
    assert enc.target_tokens_cut == len(_ids(tokenizer, target, False)) + 1 - 10
    assert enc.prompt_tokens_cut == n_prompt - 10
    tiny = encode_example(tokenizer, PROMPT, target, max_length=3)
    assert sum(label != IGNORE_INDEX for label in tiny.labels) >= 1
    with pytest.raises(ValueError, match="no room"):
        encode_example(tokenizer, PROMPT, target, max_length=2)


def _items(n_images=(True, False, True)):
    items = []
    for i, flag in enumerate(n_images):
        item = {"prompt": PROMPT if i % 2 == 0 else "Caption:", "target": TARGET[: 10 + 8 * i],
                "has_image": flag, "meta": {"i": i}}
        if flag:
            item["image"] = torch.full((3, 4, 4), float(i + 1))
        items.append(item)
    return items


def test_training_batch_pads_right_with_masked_labels(tokenizer):
    items = _items()
    batch = Collator(tokenizer, 64)(items)
    inputs = batch.inputs
    encoded = [encode_example(tokenizer, it["prompt"], it["target"], 64) for it in items]
    width = max(len(e.input_ids) for e in encoded)
    assert inputs["input_ids"].shape == inputs["labels"].shape == inputs["attention_mask"].shape == (3, width)
    for row, e in enumerate(encoded):
        k = len(e.input_ids)
        assert inputs["input_ids"][row, :k].tolist() == e.input_ids
        assert inputs["labels"][row, :k].tolist() == e.labels
        assert (inputs["input_ids"][row, k:] == tokenizer.pad_token_id).all()
        assert (inputs["labels"][row, k:] == IGNORE_INDEX).all()
        assert inputs["attention_mask"][row].tolist() == [1] * k + [0] * (width - k)
    assert batch.meta == [{"i": 0}, {"i": 1}, {"i": 2}] and batch.num_items == 3
    assert batch.stats == {"examples": 3, "truncated": 0, "prompt_tokens_cut": 0, "target_tokens_cut": 0,
                           "skipped": 0}
    # what a causal LM's loss covers: every target token (labels are shifted by one; position 0 is a prompt token)
    assert batch.num_label_tokens == sum(sum(label != IGNORE_INDEX for label in e.labels) for e in encoded)
    assert batch.num_tokens == sum(len(e.input_ids) for e in encoded)


def test_images_are_stacked_with_zeros_where_there_is_none(tokenizer):
    collate = Collator(tokenizer, 64)
    batch = collate(_items()).inputs
    assert batch["has_image"].tolist() == [True, False, True]
    assert batch["images"].shape == (3, 3, 4, 4)
    assert batch["images"][0].eq(1).all() and batch["images"][1].eq(0).all() and batch["images"][2].eq(3).all()
    tokens = [{"prompt": "a", "target": " b", "has_image": f, "visual_tokens": torch.ones(5, 8) if f else
               torch.full((5, 8), 7.0), "meta": {}} for f in (False, True)]
    batch = collate(tokens).inputs
    assert "images" not in batch and batch["visual_tokens"].shape == (2, 5, 8)
    assert batch["visual_tokens"][0].eq(0).all() and batch["visual_tokens"][1].eq(1).all()
    text_only = collate([{"prompt": "a", "target": " b", "has_image": False, "meta": {}}]).inputs
    assert text_only["has_image"].tolist() == [False] and "images" not in text_only
    with pytest.raises(ValueError, match="has_image=True but no image"):
        collate([{"prompt": "a", "target": " b", "has_image": True, "meta": {}}])


def test_a_blank_gives_every_batch_its_visual_input_even_without_any_image(tokenizer):
    """Text-only rows (ScienceQA without an image, instruction data) still pass zeros of the task's image shape,
    so a batch of them alone reaches the model's visual path like any other batch."""
    collate = Collator(tokenizer, 64, blank={"image": torch.zeros(3, 4, 4)})
    text_only = collate([{"prompt": "a", "target": " b", "has_image": False, "meta": {}}] * 2).inputs
    assert text_only["images"].shape == (2, 3, 4, 4) and text_only["images"].eq(0).all()
    mixed = collate(_items()).inputs
    assert mixed["images"][0].eq(1).all() and mixed["images"][1].eq(0).all()
    with pytest.raises(ValueError, match="blank must map"):
        Collator(tokenizer, 64, blank={"pixels": torch.zeros(1)})


def test_generation_batch_pads_left_and_rows_do_not_depend_on_the_batch(tokenizer):
    items = _items()
    collate = Collator(tokenizer, 64)
    batch = collate.prompts(items).inputs
    assert "labels" not in batch
    width = batch["input_ids"].shape[1]
    for row, it in enumerate(items):
        ids = encode_prompt(tokenizer, it["prompt"], 64).input_ids
        k = len(ids)
        assert batch["input_ids"][row, width - k:].tolist() == ids
        assert batch["attention_mask"][row].tolist() == [0] * (width - k) + [1] * k
        alone = collate.prompts([it]).inputs
        assert alone["input_ids"][0].tolist() == ids  # same tokens, last token at the end, whatever the batch
    assert (batch["input_ids"][:, -1] == batch["input_ids"][0, -1]).all()  # all rows end on the prompt's ":"


def test_generation_prompts_are_truncated_by_the_same_policy_as_in_training(tokenizer):
    """One prompt path: a generation prompt is cut from the left like a training prompt (after the BOS), so it ends
    exactly like the training prompt; training cuts more because the answer needs room too."""
    collate = Collator(tokenizer, max_length=12)
    item = {"prompt": PROMPT, "target": TARGET[:10], "has_image": False, "meta": {}}
    train = collate([item])
    trained_prompt = train.inputs["input_ids"][0][train.inputs["labels"][0] == IGNORE_INDEX].tolist()
    assert train.stats["prompt_tokens_cut"] > 0
    generated = collate.prompts([item])
    assert generated.stats["prompt_tokens_cut"] > 0
    ids = generated.inputs["input_ids"][0].tolist()
    assert len(ids) == 12 and ids[0] == trained_prompt[0] == tokenizer.bos_token_id
    assert ids[-(len(trained_prompt) - 1):] == trained_prompt[1:]


def test_truncation_and_skips_are_counted_per_batch(tokenizer):
    coll = Collator(tokenizer, max_length=8)
    long = {"prompt": PROMPT, "target": TARGET, "has_image": False, "meta": {}}
    short = {"prompt": "a", "target": " b", "has_image": False, "meta": {}}
    b1 = coll([long, short, None])
    assert b1.stats["truncated"] == 1 and b1.stats["skipped"] == 1 and b1.stats["examples"] == 2
    assert b1.stats["prompt_tokens_cut"] > 0
    assert b1.inputs["input_ids"].shape[1] == 8
    empty = coll([None, None])
    assert empty.inputs == {} and empty.num_items == 0
    assert empty.stats == {"examples": 0, "truncated": 0, "prompt_tokens_cut": 0, "target_tokens_cut": 0, "skipped": 2}


def test_pad_id_falls_back_to_eos(tokenizer_nobos):
    import copy

    tok = copy.deepcopy(tokenizer_nobos)
    tok.pad_token = None
    assert pad_id(tok) == tok.eos_token_id
    batch = Collator(tok, 64)([{"prompt": "a", "target": " b c d", "meta": {}}, {"prompt": "a", "target": " b", "meta": {}}])
    assert batch.inputs["labels"][1, -1] == IGNORE_INDEX and batch.inputs["attention_mask"][1, -1] == 0


def test_pad_to_multiple_of(tokenizer):
    batch = Collator(tokenizer, 64, pad_to_multiple_of=8)([{"prompt": "a", "target": " b", "meta": {}}])
    assert batch.inputs["input_ids"].shape[1] % 8 == 0
