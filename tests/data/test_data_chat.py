"""Conversations through the tokenizer's own chat template: labels exactly on every assistant turn (its content and
its end-of-turn token) and on no system, user or scaffolding token; truncation by whole trailing turns."""
from __future__ import annotations

from pathlib import Path

import pytest

from data.chat import ChatTemplateError, encode_chat_prompt, encode_conversation
from data.collate import ChatCollator
from data.text import IGNORE_INDEX
from tests.delia.helpers import chat_tokenizer

SMOLLM2 = Path(__file__).resolve().parents[2] / ".cache" / "smollm2-135m-instruct"

# SmolLM2's ChatML template without its default system turn.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What colour is the sky?"},
    {"role": "assistant", "content": "Blue, on a clear day."},
    {"role": "user", "content": "And at night?"},
    {"role": "assistant", "content": "Black."},
]


def chatml_tokenizer():
    """A byte-level BPE (merges across the turn boundaries are possible) with ChatML's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([m["content"] for m in CONVERSATION] * 3 + ["system user assistant\n"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


TOKENIZERS = {"chatml-bpe": chatml_tokenizer, "tiny-words": chat_tokenizer}


def labelled_runs(labels: list[int]) -> list[list[int]]:
    """The runs of consecutive labelled ids."""
    runs, current = [], []
    for label in labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs


def answer_ids(tokenizer, content: str) -> list[int]:
    """What an answer's labels must be: its content's ids, then the end-of-turn token."""
    return tokenizer(content, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_labels_are_every_assistant_turn_and_nothing_else(name):
    tokenizer = TOKENIZERS[name]()
    encoded = encode_conversation(tokenizer, CONVERSATION, max_length=512)
    reference = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert encoded.input_ids == list(reference) and not encoded.truncated
    assert labelled_runs(encoded.labels) == [answer_ids(tokenizer, "Blue, on a clear day."),
                                             answer_ids(tokenizer, "Black.")]
    for ids, label in zip(encoded.input_ids, encoded.labels):
        assert label in (IGNORE_INDEX, ids)


def test_chatml_scaffolding_and_user_turns_are_not_labelled():
    tokenizer = chatml_tokenizer()
    encoded = encode_conversation(tokenizer, CONVERSATION, max_length=512)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    unlabelled = tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label == IGNORE_INDEX])
    labelled = tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    assert labelled == "Blue, on a clear day.<|im_end|>Black.<|im_end|>"
    assert len(unlabelled) + len(labelled) == len(text)
    assert unlabelled == ("<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\nWhat colour is the "
                          "sky?<|im_end|>\n<|im_start|>assistant\n\n<|im_start|>user\nAnd at night?<|im_end|>\n"
                          "<|im_start|>assistant\n\n")


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="SmolLM2 not converted (make demo)")
def test_smollm2_labels_its_answers_with_its_im_end():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, local_files_only=True)
    messages = CONVERSATION[1:]  # its template then adds its default system turn, unlabelled
    encoded = encode_conversation(tokenizer, messages, max_length=512)
    assert encoded.input_ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert labelled_runs(encoded.labels) == [answer_ids(tokenizer, "Blue, on a clear day."),
                                             answer_ids(tokenizer, "Black.")]


def test_truncation_drops_whole_trailing_turns_and_skips_a_first_answer_that_does_not_fit():
    tokenizer = chatml_tokenizer()
    full = encode_conversation(tokenizer, CONVERSATION, max_length=512)
    first = encode_conversation(tokenizer, CONVERSATION[:3], max_length=512)
    cut = encode_conversation(tokenizer, CONVERSATION, max_length=len(full.input_ids) - 1)
    assert cut.turns_dropped == 1 and cut.truncated
    assert cut.input_ids == first.input_ids and cut.labels == first.labels
    assert encode_conversation(tokenizer, CONVERSATION, max_length=len(first.input_ids) - 1) is None

    collator = ChatCollator(tokenizer, max_length=len(first.input_ids))
    batch = collator([{"messages": CONVERSATION, "meta": {"id": "a"}},
                      {"messages": [{"role": "user", "content": "sky " * 200}, {"role": "assistant", "content": "x"}],
                       "meta": {"id": "b"}}])
    assert batch.num_items == 1 and batch.meta == [{"id": "a"}]
    assert {k: batch.stats[k] for k in ("examples", "truncated", "turns_dropped", "too_long", "skipped")} == {
        "examples": 1, "truncated": 1, "turns_dropped": 1, "too_long": 1, "skipped": 1}
    assert batch.num_label_tokens == sum(label != IGNORE_INDEX for label in first.labels)


def test_generation_prompt_is_the_conversation_up_to_its_last_user_turn():
    tokenizer = chatml_tokenizer()
    expected = tokenizer.apply_chat_template(CONVERSATION[:4], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    assert encode_chat_prompt(tokenizer, CONVERSATION, 512).input_ids == list(expected)
    short = tokenizer.apply_chat_template([CONVERSATION[0], CONVERSATION[3]], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"]
    dropped = encode_chat_prompt(tokenizer, CONVERSATION, len(short))
    assert dropped.input_ids == list(short) and dropped.turns_dropped == 1
    batch = ChatCollator(tokenizer, 512).prompts([{"messages": CONVERSATION, "meta": {}}])
    assert batch.inputs["input_ids"][0].tolist() == list(expected) and "labels" not in batch.inputs


@pytest.mark.parametrize("template, problem", [
    ("{{ messages|length }}" + CHATML, "prefix"),  # the count at the start changes with every turn
    (CHATML.replace("{{ '<|im_start|>assistant\n' }}", ""), "no generation prompt"),
])
def test_a_template_that_breaks_the_turn_boundaries_is_refused(template, problem):
    with pytest.raises(ChatTemplateError, match=problem):
        encode_conversation(chatml_tokenizer(), CONVERSATION, 512, template=template)


def test_a_tokenizer_without_a_chat_template_is_refused_unless_one_is_given():
    from tests.delia.helpers import TINY_CHAT_TEMPLATE
    from tests.tiny_models import tiny_tokenizer

    messages = [{"role": "user", "content": "yes"}, {"role": "assistant", "content": "no"}]
    with pytest.raises(ChatTemplateError, match="data.chat_template"):
        encode_conversation(tiny_tokenizer(), messages, 64)
    assert encode_conversation(tiny_tokenizer(), messages, 64, template=TINY_CHAT_TEMPLATE).labels.count(
        IGNORE_INDEX) > 0


def test_prompt_target_items_in_a_conversation_batch_are_encoded_as_by_the_plain_collator():
    from data.collate import Collator

    tokenizer = chatml_tokenizer()
    plain = {"prompt": "What colour is the sky?", "target": "Blue.", "has_image": False, "meta": {"delia_id": 1}}
    mixed = ChatCollator(tokenizer, 512)([{"messages": CONVERSATION, "meta": {}}, plain])
    alone = Collator(tokenizer, 512)([plain])
    n = alone.inputs["input_ids"].shape[1]
    assert mixed.inputs["input_ids"][1, :n].tolist() == alone.inputs["input_ids"][0].tolist()
    assert mixed.inputs["labels"][1, :n].tolist() == alone.inputs["labels"][0].tolist()
