"""Tiny word-level tokenizers with and without a chat template (tests/tiny_models.py), and a small pool."""
from __future__ import annotations

from mm_excitor.delia.pools import PoolRecord
from tests.tiny_models import tiny_tokenizer

# ChatML-like, in words the tiny tokenizer knows: "<s>question : ...</s>" for users, "<s>answer : ...</s>" else.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{% if m['role'] == 'user' %}question{% elif m['role'] == 'system' %}context"
    "{% else %}answer{% endif %} : {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>answer :"
    "{% endif %}"
)


def chat_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def pool_records(n: int = 7) -> list[PoolRecord]:
    """Queries of different lengths, so batches need padding."""
    phrases = ["describe the red circle", "is the square blue ?", "two small green triangles left of a circle",
               "what is the answer", "yes", "the large yellow square in the image", "three"]
    return [PoolRecord(f"r{i}", phrases[i % len(phrases)] + (" one" * (i // len(phrases))),
                       f"a {['red', 'blue', 'green'][i % 3]} circle") for i in range(n)]


def write_samples(path, n: int) -> str:
    """A self-sampled file of `n` records in the words of the tiny tokenizer (as `mm_excitor.delia sample` writes)."""
    import json

    colours, shapes = ["red", "blue", "green", "yellow"], ["circle", "square", "triangle"]
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            query = f"describe the {colours[i % 4]} {shapes[i % 3]}" + " in one sentence" * (i % 2)
            answer = f"a {colours[(i + 1) % 4]} {shapes[(i + 2) % 3]} left of " + "the circle " * (1 + i % 3)
            handle.write(json.dumps({"id": f"s{i}", "messages": [{"role": "user", "content": query},
                                                                 {"role": "assistant", "content": answer.strip()}],
                                     "finish": "stop"}) + "\n")
    return str(path)
