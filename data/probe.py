"""The basic-capability probe: multiple-choice questions with exactly one right option each, built offline and
deterministically from WordNet 3.0 (Debian's ``wordnet-base``: ``/usr/share/wordnet``) and from arithmetic rules.

    apt-get install wordnet-base
    python -m data.probe --wordnet /usr/share/wordnet --out data/probe/probe.jsonl

It stands in for the MMLU of the Excitor paper at the scale of a 135M LM: what the frozen base model already knows,
measured again after tuning (``eval/probe.py`` scores it). Categories:

- ``definition``: a common noun's WordNet definition -> the noun;
- ``hypernym``: a common noun -> what it is a kind of (its direct WordNet hypernym);
- ``antonym``: a common adjective -> its direct WordNet antonym;
- ``arithmetic``: a sum, difference or product of two numbers from 1 to 12.

A fifth category, the next term of an arithmetic progression, was dropped: the frozen base scored it at chance
(docs/probe.md), and a category the base cannot do measures nothing.

"Common" is WordNet's own sense-tagged frequency (``cntlist.rev``): a noun's most frequent sense, tagged at least
``min_count`` times, its hypernym's most frequent lemma as well; an adjective's sense tagged ``min_count`` times and
its antonym tagged at all. Distractors come from the same category's answers and are excluded when WordNet makes them
right too (definition: a noun with a sense that is the target synset, one of its ancestors or descendants;
hypernym: a lemma of any ancestor of any sense of the noun; antonym: a lemma of an antonym synset of any sense of
the adjective or of its similar-to satellites). Every choice is drawn from ``random.Random`` seeded by
``(seed, category)`` over sorted candidates, so the same WordNet files give the same bytes. The question file's
sidecar ``<out>.meta.json`` records the version, the seed, the counts and the sha256 of each WordNet file read.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data.errors import DataError
from mm_excitor.cli import run_cli
from mm_excitor.io import atomic_write_json, atomic_write_jsonl

PROBE_VERSION = 3
WORDNET_FILES = ("data.noun", "data.adj", "cntlist.rev")
CATEGORIES = ("definition", "hypernym", "antonym", "arithmetic")
NUM_OPTIONS = 4
SENSE_TYPE = {"n": 1, "a": 3, "s": 5}
"""WordNet's synset type -> the digit a sense key (``lemma%5:00:00:head:00``) spells it with."""
HYPERNYMS = ("@", "@i")
ANTONYM, SIMILAR = "!", "&"
SIMPLE_WORD = re.compile(r"[a-z]+")
ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass(frozen=True)
class ProbeConfig:
    per_category: int = 300
    seed: int = 0
    min_count: int = 5
    """A word's sense must be tagged at least this often in WordNet's sense-tagged corpus to be asked about."""


@dataclass(frozen=True)
class Pointer:
    symbol: str
    target: str
    source_word: int
    """1-based word of this synset the pointer starts from; 0: the whole synset (a semantic pointer)."""
    target_word: int


@dataclass(frozen=True)
class Synset:
    key: str
    """``n02084071``: the file's part of speech (``a`` for adjectives and their satellites) and byte offset."""
    type: str
    """n, a or s (an adjective satellite)."""
    lexfile: int
    words: tuple[str, ...]
    """Lemmas with spaces for underscores, adjective markers dropped, case kept."""
    lex_ids: tuple[int, ...]
    pointers: tuple[Pointer, ...]
    gloss: str


class WordNet:
    """The synsets of data.noun and data.adj with each sense's tag count and sense number from cntlist.rev."""

    def __init__(self, synsets: Iterable[Synset], counts: dict[tuple[str, str], tuple[int, int]]) -> None:
        self.synsets = {synset.key: synset for synset in synsets}
        self.counts = counts
        """(lower-case lemma, synset key) -> (sense number, tag count)."""
        self.senses: dict[tuple[str, str], list[str]] = defaultdict(list)
        """(lower-case lemma, n | a) -> the keys of its synsets."""
        self.hyponyms: dict[str, list[str]] = defaultdict(list)
        for synset in self.synsets.values():
            for word in synset.words:
                self.senses[word.lower(), synset.key[0]].append(synset.key)
            for pointer in synset.pointers:
                if pointer.symbol in HYPERNYMS:
                    self.hyponyms[pointer.target].append(synset.key)

    @classmethod
    def read(cls, root: str | Path) -> WordNet:
        root = Path(root)
        missing = [name for name in WORDNET_FILES if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{root}: no WordNet 3.0 database ({', '.join(missing)} missing); install "
                                    "Debian's wordnet-base and pass --wordnet /usr/share/wordnet")
        synsets = [synset for name in ("data.noun", "data.adj") for synset in read_data_file(root / name)]
        by_sense = {(word.lower(), SENSE_TYPE[s.type], s.lexfile, lex_id): s.key
                    for s in synsets for word, lex_id in zip(s.words, s.lex_ids)}
        counts = {}
        for number, line in enumerate((root / "cntlist.rev").read_text(encoding="utf-8").splitlines(), 1):
            try:
                sense_key, sense_number, count = line.split()
                lemma, _, rest = sense_key.partition("%")
                ss_type, lexfile, lex_id = (int(field) for field in rest.split(":")[:3])
            except ValueError:
                raise DataError(root / "cntlist.rev", f"line {number}", "not `lemma%t:ff:ii:: sense count`") from None
            key = by_sense.get((lemma.replace("_", " "), ss_type, lexfile, lex_id))
            if key is not None:
                counts[lemma.replace("_", " "), key] = (int(sense_number), int(count))
        return cls(synsets, counts)

    def count(self, word: str, key: str) -> int:
        return self.counts.get((word.lower(), key), (0, 0))[1]

    def is_first_sense(self, word: str, key: str) -> bool:
        return self.counts.get((word.lower(), key), (0, 0))[0] == 1

    def related(self, key: str, symbols: Sequence[str]) -> list[str]:
        return [p.target for p in self.synsets[key].pointers if p.symbol in symbols and p.target in self.synsets]

    def ancestors(self, key: str) -> set[str]:
        """Every synset above `key` through hypernyms and instance hypernyms."""
        seen: set[str] = set()
        stack = self.related(key, HYPERNYMS)
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack += self.related(current, HYPERNYMS)
        return seen

    def descendants(self, key: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.hyponyms[key])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack += self.hyponyms[current]
        return seen

    def lemmas(self, keys: Iterable[str]) -> set[str]:
        return {word.lower() for key in keys for word in self.synsets[key].words}


def read_data_file(path: Path) -> list[Synset]:
    """The synsets of a WordNet ``data.*`` file (wndb(5)); the licence header's lines start with spaces."""
    synsets = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith(" "):
            continue
        try:
            synsets.append(parse_synset(line, path.name.split(".")[-1][0]))
        except (ValueError, IndexError):
            raise DataError(path, f"line {number}", "not a WordNet synset line (wndb(5))") from None
    return synsets


def parse_synset(line: str, file_pos: str) -> Synset:
    head, _, gloss = line.partition("|")
    fields = head.split()
    n_words = int(fields[3], 16)
    words = tuple(ADJECTIVE_MARKER.sub("", word).replace("_", " ") for word in fields[4:4 + 2 * n_words:2])
    lex_ids = tuple(int(lex_id, 16) for lex_id in fields[5:5 + 2 * n_words:2])
    at = 4 + 2 * n_words
    n_pointers = int(fields[at])
    pointers = []
    for start in range(at + 1, at + 1 + 4 * n_pointers, 4):
        symbol, offset, pos, source_target = fields[start:start + 4]
        pointers.append(Pointer(symbol, f"{'a' if pos == 's' else pos}{offset}", int(source_target[:2], 16),
                                int(source_target[2:], 16)))
    if len(pointers) != n_pointers or len(words) != n_words:
        raise ValueError("truncated synset line")
    return Synset(f"{file_pos}{fields[0]}", fields[2], int(fields[1]), words, lex_ids, tuple(pointers), gloss.strip())


# --- questions ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """One question before its distractors: the asked item, the answer, and the options that would be right too."""
    question: str
    answer: str
    excluded: frozenset[str]
    """Options that must not be offered as distractors (they would be right as well, or are the asked word)."""
    source: dict[str, Any]


def definition_candidates(wordnet: WordNet, config: ProbeConfig) -> list[Candidate]:
    candidates = []
    for key, synset in wordnet.synsets.items():
        if synset.type != "n":
            continue
        definition = synset.gloss.split(";")[0].strip()
        for word in synset.words[:1]:
            if not _common(wordnet, word, key, config) or not 3 <= len(definition.split()) <= 25:
                continue
            if any(_mentions(definition, lemma) for lemma in synset.words):
                continue
            related = {key} | wordnet.ancestors(key) | wordnet.descendants(key)
            candidates.append(Candidate(f'Which word means "{definition}"?', word,
                                        frozenset(wordnet.lemmas(related)), {"synset": key}))
    return candidates


def hypernym_candidates(wordnet: WordNet, config: ProbeConfig) -> list[Candidate]:
    candidates = []
    for key, synset in wordnet.synsets.items():
        if synset.type != "n" or not _common(wordnet, synset.words[0], key, config):
            continue
        word = synset.words[0]
        parents = wordnet.related(key, HYPERNYMS)
        if len(parents) != 1:
            continue
        answer = max(wordnet.synsets[parents[0]].words, key=lambda w: (wordnet.count(w, parents[0]), w))
        if (not _common(wordnet, answer, parents[0], config, first_sense=False) or _mentions(answer, word)
                or _mentions(word, answer)):
            continue
        above = set().union(*(wordnet.ancestors(k) | {k} for k in wordnet.senses[word, "n"]))
        candidates.append(Candidate(f'A "{word}" is a kind of what?', answer,
                                    frozenset(wordnet.lemmas(above)), {"synset": key, "hypernym": parents[0]}))
    return candidates


def antonym_candidates(wordnet: WordNet, config: ProbeConfig) -> list[Candidate]:
    candidates = []
    for key, synset in wordnet.synsets.items():
        if synset.type != "a":
            continue
        for pointer in synset.pointers:
            if pointer.symbol != ANTONYM or not pointer.source_word or pointer.target not in wordnet.synsets:
                continue
            word = synset.words[pointer.source_word - 1]
            answer = wordnet.synsets[pointer.target].words[pointer.target_word - 1]
            if not (_common(wordnet, word, key, config, first_sense=False) and SIMPLE_WORD.fullmatch(answer)
                    and wordnet.count(answer, pointer.target) > 0):
                continue
            candidates.append(Candidate(f'What is the opposite of "{word}"?', answer,
                                        frozenset(_opposites(wordnet, word) | {word}),
                                        {"synset": key, "antonym": pointer.target}))
    return candidates


def _opposites(wordnet: WordNet, word: str) -> set[str]:
    """Lemmas of the antonym synsets of every adjective sense of `word` (through the head of a satellite sense),
    with their similar-to satellites."""
    heads = set()
    for key in wordnet.senses[word.lower(), "a"]:
        heads |= {key} if wordnet.synsets[key].type == "a" else set(wordnet.related(key, (SIMILAR,)))
    opposite = {target for head in heads for target in wordnet.related(head, (ANTONYM,))}
    return wordnet.lemmas(opposite | {s for k in opposite for s in wordnet.related(k, (SIMILAR,))})


def _common(wordnet: WordNet, word: str, key: str, config: ProbeConfig, first_sense: bool = True) -> bool:
    return (SIMPLE_WORD.fullmatch(word) is not None and wordnet.count(word, key) >= config.min_count
            and (not first_sense or wordnet.is_first_sense(word, key)))


def _mentions(text: str, word: str) -> bool:
    """Whether `text` gives `word` away: the word, or a word sharing its first five letters."""
    stem = word.lower()[:5]
    return any(token == word.lower() or (len(stem) == 5 and token.startswith(stem))
               for token in re.findall(r"[a-z]+", text.lower()))


def arithmetic_candidates() -> list[Candidate]:
    """Every sum, difference (not negative) and product of two numbers from 1 to 12."""
    items = [(a, op, b) for a in range(1, 13) for b in range(1, 13) for op in "+-*" if op != "-" or a >= b]
    return [Candidate(f"What is {a} {op} {b}?", str({"+": a + b, "-": a - b, "*": a * b}[op]), frozenset(),
                      {"a": a, "op": op, "b": b}) for a, op, b in items]


NUMBER_OFFSETS = tuple(d for d in range(-20, 21) if abs(d) >= 3)
"""Numeric distractors are the answer moved by three of these (never below zero): at least 3 away, since the
frozen 135M model picks among the answer's immediate neighbours below chance."""


def number_distractors(answer: str, rng: random.Random) -> list[str]:
    value = int(answer)
    return [str(value + offset) for offset in rng.sample([o for o in NUMBER_OFFSETS if value + o >= 0], 3)]


def word_distractors(candidate: Candidate, pool: Sequence[str], rng: random.Random) -> list[str] | None:
    """Three distinct distractors from `pool` (the category's answers, sorted) that WordNet does not make right;
    None when the pool has too few."""
    allowed = [word for word in pool if word != candidate.answer and word.lower() not in candidate.excluded]
    return rng.sample(allowed, NUM_OPTIONS - 1) if len(allowed) >= NUM_OPTIONS - 1 else None


def category_questions(category: str, candidates: list[Candidate], config: ProbeConfig,
                       distractors: Callable[[Candidate, random.Random], list[str] | None]) -> list[dict[str, Any]]:
    """`per_category` questions of one category: candidates chosen, distractors drawn and options shuffled by a
    generator seeded with (seed, category); fewer candidates than asked for is an error."""
    rng = random.Random(f"{config.seed}:{category}")
    unique = {c.question: c for c in sorted(candidates, key=lambda c: (c.question, c.answer))}
    ordered = [unique[q] for q in sorted(unique)]
    rng.shuffle(ordered)
    questions = []
    for candidate in ordered:
        others = distractors(candidate, rng)
        if others is None:
            continue
        options = [candidate.answer, *others]
        rng.shuffle(options)
        questions.append({"id": f"{category}-{len(questions) + 1:04d}", "category": category,
                          "question": candidate.question, "options": options,
                          "answer": options.index(candidate.answer), "source": candidate.source})
        if len(questions) == config.per_category:
            return questions
    raise ValueError(f"only {len(questions)} {category} questions can be built, {config.per_category} asked for: "
                     "lower --per-category or --min-count")


def build_probe(wordnet: WordNet, config: ProbeConfig) -> list[dict[str, Any]]:
    """Every category's questions, in CATEGORIES order."""
    builders = {"definition": definition_candidates, "hypernym": hypernym_candidates,
                "antonym": antonym_candidates}
    questions = []
    for category in CATEGORIES:
        if category in builders:
            candidates = builders[category](wordnet, config)
            pool = sorted({c.answer for c in candidates})
            questions += category_questions(category, candidates, config,
                                             lambda c, rng, pool=pool: word_distractors(c, pool, rng))
        else:
            questions += category_questions(category, arithmetic_candidates(), config,
                                            lambda c, rng: number_distractors(c.answer, rng))
    return questions


def wordnet_checksums(root: str | Path) -> dict[str, str]:
    return {name: hashlib.sha256((Path(root) / name).read_bytes()).hexdigest() for name in WORDNET_FILES}


def meta_path(out: str | Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".meta.json")


def write_probe(wordnet_root: str | Path, out: str | Path, config: ProbeConfig = ProbeConfig(),
                wordnet: WordNet | None = None) -> list[dict]:
    """Build the probe from the WordNet files in `wordnet_root` (already read: `wordnet`); write the questions and
    their sidecar."""
    questions = build_probe(wordnet or WordNet.read(wordnet_root), config)
    atomic_write_jsonl(out, questions)
    counts = {category: sum(q["category"] == category for q in questions) for category in CATEGORIES}
    atomic_write_json(meta_path(out), {
        "version": PROBE_VERSION, "config": asdict(config), "num_options": NUM_OPTIONS,
        "chance": 1 / NUM_OPTIONS, "counts": counts, "total": len(questions),
        "wordnet": {"source": "WordNet 3.0, Debian package wordnet-base", "sha256": wordnet_checksums(wordnet_root)},
    })
    return questions


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", required=True, help="WordNet 3.0 database directory, e.g. /usr/share/wordnet")
    parser.add_argument("--out", required=True, help="question file (JSON lines); its sidecar is <stem>.meta.json")
    defaults = ProbeConfig()
    parser.add_argument("--per-category", type=int, default=defaults.per_category)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--min-count", type=int, default=defaults.min_count)
    args = parser.parse_args(argv)
    config = ProbeConfig(per_category=args.per_category, seed=args.seed, min_count=args.min_count)
    questions = write_probe(args.wordnet, args.out, config)
    print(f"wrote {len(questions)} questions to {args.out} and {meta_path(args.out)}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main, sys.argv[1:]))
