"""Near-duplicate tests for generated instructions: normalised text and ROUGE-L, as self-instruct filters them.

Words are rouge_score's default tokens (lower case, runs of letters and digits); ROUGE-L is the F1 of the longest
common subsequence of two word lists, the ``fmeasure`` that self-instruct and Stanford Alpaca compare with 0.7.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_NON_WORD = re.compile(r"[^a-z0-9]+")


def words(text: str) -> list[str]:
    return _NON_WORD.sub(" ", text.lower()).split()


def normalised(text: str) -> str:
    """The text two instructions must not share: words only, single spaces."""
    return " ".join(words(text))


def rouge_l(a: list[str], b: list[str]) -> float:
    """F1 of the longest common subsequence of two word lists (0 when either is empty)."""
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


class NearDuplicateIndex:
    """Texts seen so far; `match` says whether a new one repeats one of them, and how."""

    def __init__(self, texts: Iterable[str] = (), threshold: float = 0.7) -> None:
        self.threshold = threshold
        self._exact: set[str] = set()
        self._tokens: list[tuple[list[str], Counter[str]]] = []
        for text in texts:
            self.add(text)

    def add(self, text: str) -> None:
        tokens = words(text)
        self._exact.add(" ".join(tokens))
        self._tokens.append((tokens, Counter(tokens)))

    def match(self, text: str) -> str | None:
        """"duplicate" (same normalised text), "similar" (ROUGE-L F1 above the threshold with some text) or None."""
        tokens = words(text)
        if " ".join(tokens) in self._exact:
            return "duplicate"
        counts = Counter(tokens)
        for other, other_counts in self._tokens:
            # the LCS is at most the size of the word multiset intersection: skip pairs that cannot reach it
            if 2 * sum((counts & other_counts).values()) <= self.threshold * (len(tokens) + len(other)):
                continue
            if rouge_l(tokens, other) > self.threshold:
                return "similar"
        return None
