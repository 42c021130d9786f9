"""The [q, r, q] prompt goes through the tokenizer's chat template exactly; the plain template otherwise."""
from __future__ import annotations

from pathlib import Path

import pytest

from mm_excitor.delia.chat import cut_at_stop, decode_answer, encode_chat_prompt, one_shot_messages, stop_token_ids
from tests.delia.helpers import chat_tokenizer
from tests.tiny_models import tiny_model, tiny_tokenizer

SMOLLM2 = Path(__file__).resolve().parents[2] / ".cache" / "smollm2-135m-instruct"


def expected_messages(q: str, r: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": r}, {"role": "user", "content": q}]


def test_one_shot_prompt_is_the_chat_template_of_user_assistant_user() -> None:
    tokenizer = chat_tokenizer()
    q, r = "describe the red circle", "a red circle"
    ids = encode_chat_prompt(tokenizer, one_shot_messages(q, r))
    reference = tokenizer.apply_chat_template(expected_messages(q, r), add_generation_prompt=True, tokenize=False)
    assert reference == ("<s>question : describe the red circle</s><s>answer : a red circle</s>"
                         "<s>question : describe the red circle</s><s>answer :")
    assert ids == tokenizer(reference, add_special_tokens=False)["input_ids"]


def test_a_system_prompt_comes_first() -> None:
    tokenizer = chat_tokenizer()
    messages = one_shot_messages("yes", "no", system="the image")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    reference = [{"role": "system", "content": "the image"}, *expected_messages("yes", "no")]
    assert encode_chat_prompt(tokenizer, messages) == tokenizer.apply_chat_template(
        reference, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="SmolLM2 not converted (make demo)")
def test_smollm2_prompt_is_its_chatml_template() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, local_files_only=True)
    q, r = "What is 2 + 2?", "4"
    text = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{r}<|im_end|>\n"
            f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
    assert encode_chat_prompt(tokenizer, one_shot_messages(q, r)) == tokenizer(text, add_special_tokens=False)[
        "input_ids"]


def test_tokenizer_without_template_gets_the_plain_template() -> None:
    tokenizer = tiny_tokenizer()
    assert not getattr(tokenizer, "chat_template", None)
    ids = encode_chat_prompt(tokenizer, one_shot_messages("is the square blue ?", "yes"))
    text = "User: is the square blue ?\nAssistant: yes\nUser: is the square blue ?\nAssistant:"
    assert ids == tokenizer(text)["input_ids"]


def test_answers_end_at_the_end_of_turn_token() -> None:
    tokenizer = chat_tokenizer()
    red, circle, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("red", "circle", "</s>", "<pad>"))
    assert decode_answer(tokenizer, [red, circle, eos, red, pad], [eos]) == ("red circle", "stop")
    assert decode_answer(tokenizer, [red, circle, red], [eos]) == ("red circle red", "length")
    assert cut_at_stop([red, eos, circle], [eos]) == ([red], True)


class DecodesTo:
    """A tokenizer stand-in whose decode gives a fixed text."""

    def __init__(self, text: str, chat_template: str | None = None) -> None:
        self.text, self.chat_template = text, chat_template

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.text


def test_plain_template_answers_end_at_the_next_user_turn() -> None:
    sample = " red circle\nUser: blue?\nAssistant: no"
    assert decode_answer(DecodesTo(sample), [5, 6], [2]) == ("red circle", "stop")
    assert decode_answer(DecodesTo(sample, chat_template="{{ x }}"), [5, 6], [2]) == (sample.strip(), "length")


def test_stop_ids_include_the_models_end_of_turn_ids() -> None:
    tokenizer, model = tiny_tokenizer(), tiny_model()
    model.generation_config.eos_token_id = [2, 7]
    assert stop_token_ids(tokenizer, model) == [2, 7]
    model.generation_config.eos_token_id = 9
    assert stop_token_ids(tokenizer, model) == [2, 9]
