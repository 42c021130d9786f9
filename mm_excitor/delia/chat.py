"""Chat prompts for self-sampling: the tokenizer's chat template, or one documented plain template.

Models with a chat template are prompted through ``tokenizer.apply_chat_template`` with the generation prompt, so
the ids are exactly what the model was trained on. Models without one (base LMs, test tokenizers) get
:data:`PLAIN_TEMPLATE`, the only place this project spells a chat out by hand::

    User: {query}
    Assistant: {reference}
    User: {query}
    Assistant:

The plain text is tokenised with the tokenizer's own special tokens (its BOS, if any). Such a model does not know
where its turn ends, so its answer is cut at the next ``"\\nUser:"``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict[str, str]

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_TEMPLATE = "{role}: {content}\n"
PLAIN_GENERATION_PROMPT = "Assistant:"
PLAIN_NEXT_TURN = "\nUser:"


def one_shot_messages(query: str, reference: str, system: str | None = None) -> list[Message]:
    """DELIA's prompt: ``[user: q, assistant: r, user: q]``, the reference answer as a one-shot example."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    return messages + [
        {"role": "user", "content": query},
        {"role": "assistant", "content": reference},
        {"role": "user", "content": query},
    ]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_plain(messages: Sequence[Message]) -> str:
    """The plain template's text, ending with the generation prompt ``"Assistant:"``."""
    turns = []
    for message in messages:
        if message["role"] not in PLAIN_ROLES:
            raise ValueError(f"role {message['role']!r} is not one of {sorted(PLAIN_ROLES)}")
        turns.append(PLAIN_TEMPLATE.format(role=PLAIN_ROLES[message["role"]], content=message["content"]))
    return "".join(turns) + PLAIN_GENERATION_PROMPT


def encode_chat_prompt(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids that ask the model for the next assistant turn."""
    if has_chat_template(tokenizer):
        encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                return_dict=True)
        return list(encoded["input_ids"])
    return list(tokenizer(render_plain(messages), add_special_tokens=True)["input_ids"])


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Ids that end an assistant turn: the tokenizer's EOS and the model's generation-config EOS ids (chat models
    often end a turn with their own token, e.g. Llama 3's ``<|eot_id|>``)."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for candidate in (getattr(tokenizer, "eos_token_id", None),
                      *(configured if isinstance(configured, (list, tuple)) else [configured])):
        if candidate is not None and int(candidate) not in ids:
            ids.append(int(candidate))
    if not ids:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token: a sampled answer could not end")
    return ids


def pad_token_id(tokenizer: Any, stop_ids: Sequence[int]) -> int:
    """The tokenizer's pad id, else the first end-of-turn id (pads are cut from samples either way)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return stop_ids[0] if pad is None else int(pad)


def decode_answer(tokenizer: Any, new_ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[str, str]:
    """(answer text, finish) from the generated ids: cut at the first end-of-turn id (finish ``"stop"``), else the
    whole sample (finish ``"length"``); special tokens and surrounding whitespace are dropped. Without a chat
    template the answer also ends at the plain template's next ``"\\nUser:"`` turn."""
    ids, stopped = cut_at_stop(new_ids, stop_ids)
    finish = "stop" if stopped else "length"
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if not has_chat_template(tokenizer) and PLAIN_NEXT_TURN in text:
        text, finish = text[: text.index(PLAIN_NEXT_TURN)], "stop"
    return text.strip(), finish


def cut_at_stop(new_ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """(the ids before the first end-of-turn id, whether there was one)."""
    stops = set(stop_ids)
    for n, token in enumerate(new_ids):
        if token in stops:
            return list(new_ids[:n]), True
    return list(new_ids), False
