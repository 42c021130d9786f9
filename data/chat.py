"""Conversations tokenised with the tokenizer's own chat template; the loss on every assistant turn and nothing else.

A conversation is a list of ``{"role", "content"}`` messages (an optional system turn, then user and assistant
turns alternating, ending with an assistant turn). Its ids are ``tokenizer.apply_chat_template(messages)``, exactly
what the model was tuned on. The labels of assistant turn k are found by rendering prefixes with the same template:

- the turn starts where ``messages[:k]`` with the generation prompt ends (``<|im_start|>assistant\\n`` is not
  labelled: it is the template's scaffolding, given at generation time too);
- it ends where ``messages[:k + 1]`` ends; the labels cover its content and its end-of-turn token(s), i.e. up to
  and including the last special token of the turn (``<|im_end|>``, ``</s>``, ``<|eot_id|>``); what the template
  writes after it (ChatML's ``\\n``) is scaffolding. A turn without a special token is labelled whole.

Every prefix's ids must be a prefix of the whole conversation's ids, and the generation prompt must be rendered
(else the turn boundaries are not the template's): a template that breaks either (one that drops earlier turns'
reasoning, or ignores ``add_generation_prompt``) is refused with a ChatTemplateError, never labelled by guess.

Truncation to ``max_length`` drops whole trailing exchanges (counted in ``ChatEncoded.turns_dropped``); a
conversation whose first answer does not fit is not encoded (None, which the instruct collator counts as skipped).
An answer is never cut. A generation prompt that is too long loses its oldest exchanges first, then (a single
over-long question) tokens from the left as ``data.text.encode_prompt`` cuts them; both are counted.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from data.text import IGNORE_INDEX, Encoded, cut_left, n_leading_special

Message = dict[str, str]


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot give per-turn labels (or there is none)."""


@dataclass(frozen=True)
class ChatEncoded(Encoded):
    """Ids and labels of one conversation; ``turns_dropped``: trailing assistant turns truncation left out."""

    turns_dropped: int = 0

    @property
    def truncated(self) -> bool:
        return super().truncated or self.turns_dropped > 0


@dataclass(frozen=True)
class AssistantSpan:
    """Token positions of one assistant turn: labels on [start, label_end), the turn's tokens end at `end`."""

    start: int
    label_end: int
    end: int


def render_ids(tokenizer: Any, messages: Sequence[Message], *, generation_prompt: bool,
               template: str | None = None) -> list[int]:
    """`apply_chat_template`'s ids (`template`: a Jinja chat template replacing the tokenizer's own)."""
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"tokenizer {type(tokenizer).__name__} has no chat template; set data.chat_template "
                                "to a Jinja template file for a base model")
    encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=generation_prompt, tokenize=True,
                                            return_dict=True, chat_template=template)
    return list(encoded["input_ids"])


def assistant_spans(tokenizer: Any, messages: Sequence[Message],
                    template: str | None = None) -> tuple[list[int], list[AssistantSpan]]:
    """The conversation's ids and the span of each assistant turn, from prefixes rendered by the template."""
    ids = render_ids(tokenizer, messages, generation_prompt=False, template=template)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_ids(tokenizer, messages[:k], generation_prompt=False, template=template)
        prompt = _prefix_of(ids, render_ids(tokenizer, messages[:k], generation_prompt=True, template=template), k)
        if len(prompt) == len(before):
            raise ChatTemplateError(f"the chat template renders no generation prompt before assistant turn {k}: the "
                                    "assistant header would be labelled as the answer")
        turn = _prefix_of(ids, render_ids(tokenizer, messages[:k + 1], generation_prompt=False, template=template),
                          k)
        start, end = len(prompt), len(turn)
        if end <= start:
            raise ChatTemplateError(f"assistant turn {k} renders no tokens after its generation prompt")
        last_special = max((i for i in range(start, end) if ids[i] in special), default=end - 1)
        spans.append(AssistantSpan(start, last_special + 1, end))
    return ids, spans


def _prefix_of(ids: list[int], prefix: list[int], turn: int) -> list[int]:
    if ids[:len(prefix)] != prefix:
        raise ChatTemplateError(f"the chat template does not render the conversation before turn {turn} as a prefix "
                                "of the whole conversation, so per-turn labels cannot be derived from it")
    return prefix


def encode_conversation(tokenizer: Any, messages: Sequence[Message], max_length: int,
                        template: str | None = None) -> ChatEncoded | None:
    """Ids with labels on every assistant turn (module docstring); None when the first answer does not fit."""
    ids, spans = assistant_spans(tokenizer, messages, template)
    if not spans:
        raise ValueError("a conversation to train on needs an assistant turn")
    labels = [IGNORE_INDEX] * len(ids)
    for span in spans:
        labels[span.start:span.label_end] = ids[span.start:span.label_end]
    if len(ids) <= max_length:
        return ChatEncoded(ids, labels)
    fitting = [span for span in spans if span.end <= max_length]
    if not fitting:
        return None
    cut = fitting[-1].end
    return ChatEncoded(ids[:cut], labels[:cut], turns_dropped=len(spans) - len(fitting))


def prompt_messages(messages: Sequence[Message]) -> list[Message]:
    """The conversation up to its last user turn: what the model is asked to answer."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError("a conversation to answer needs a user turn")
    return list(messages[:last_user + 1])


def encode_chat_prompt(tokenizer: Any, messages: Sequence[Message], max_length: int,
                       template: str | None = None) -> ChatEncoded:
    """Generation ids for the conversation up to its last user turn, with the template's generation prompt;
    too long, it loses its oldest exchanges (after the system turn), then tokens from the left."""
    messages = prompt_messages(messages)
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    ids = render_ids(tokenizer, system + turns, generation_prompt=True, template=template)
    while len(ids) > max_length and len(turns) > 1:
        turns, dropped = turns[2:], dropped + 1
        ids = render_ids(tokenizer, system + turns, generation_prompt=True, template=template)
    ids, cut = cut_left(ids, max_length, n_leading_special(tokenizer, ids))
    return ChatEncoded(ids, None, prompt_tokens_cut=cut, turns_dropped=dropped)
