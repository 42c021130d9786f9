"""A synthetic general-instruction pool written by the LM itself, self-instruct style, for offline DELIA demos.

No outside instruction data exists here, so the project brings a small hand-written seed set
(``data/delia/seed_tasks.jsonl``) and lets the model grow it, after Wang et al.'s self-instruct
(yizhongw/self-instruct, ``bootstrap_instructions.py``):

1. **Instructions.** Each prompt lists 8 instructions (6 random seeds, up to 2 already generated, shuffled) as
   ``"Come up with a series of tasks:\\n1. ...\\n8. ...\\n9."``, and the model continues the list (temperature
   0.7, top-p 0.9, until a blank line). The lines it writes are new candidates (a last line cut by the token limit
   is dropped). Temperature 1.0 gave mostly statements rather than tasks with SmolLM2-135M.
2. **Filters** (self-instruct's): fewer than ``min_words`` or more than ``max_words`` words; a keyword a text model
   cannot act on (image, graph, picture, file, map, draw, plot, go to, ...); "Write a program"; a first character
   that is punctuation or not ASCII; the same normalised text as, or ROUGE-L F1 above ``max_similarity`` with,
   a seed or an instruction kept before (:mod:`mm_excitor.delia.similarity`).
3. **Reference answers.** The model answers each kept instruction through its chat template (zero-shot,
   temperature 0.7, top-p 0.95). An empty answer, one cut by ``answer_max_new_tokens``, or one that copies the
   instruction (ROUGE-L F1 above ``max_similarity``) drops the instruction.

Work goes in rounds of ``prompts_per_round`` prompts, each round seeded by ``(seed, round)`` and committed to a
journal (``{output}.journal.jsonl``), so a killed run resumes exactly, and a larger ``size`` later extends the
same pool (the first N records do not depend on the size asked for). The output is a ``qa`` pool
(``{"id", "query", "answer", "synthetic": true}``) plus ``{stem}.meta.json`` with the filter counts.

The result is synthetic and only as good as the model: with a 135M model expect simple, sometimes wrong or
repetitive instructions and answers. It is meant for demos and tests of the pipeline, not as a benchmark pool.
"""
from __future__ import annotations

import random
import re
import string
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..identity import language_model_identity
from ..decoding import Decoding
from ..io import atomic_write_json, atomic_write_jsonl
from .chat import cut_at_stop, decode_answer, encode_chat_prompt, pad_token_id, stop_token_ids
from .generate import derive_seed, sample_ids, sampling_decoding, sampling_kwargs
from ..journal import Journal, json_roundtrip
from .sampling import meta_path
from .similarity import NearDuplicateIndex, rouge_l, words

UNSUITABLE_WORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
LIST_PROMPT_HEADER = "Come up with a series of tasks:\n"
LIST_END = "\n\n"


@dataclass(frozen=True)
class PoolGenerationConfig:
    size: int = 200
    seed: int = 0
    seed_examples: int = 6
    """Seed instructions per prompt."""
    generated_examples: int = 2
    """Instructions generated earlier, added to each prompt (fewer while there are fewer)."""
    prompts_per_round: int = 8
    """Prompts sampled as one batch per round."""
    instruction_max_new_tokens: int = 96
    instruction_temperature: float = 0.7
    instruction_top_p: float = 0.9
    answer_max_new_tokens: int = 256
    answer_temperature: float = 0.7
    answer_top_p: float = 0.95
    answer_batch_size: int = 16
    min_words: int = 4
    max_words: int = 60
    max_similarity: float = 0.7
    max_rounds: int = 1000
    """Give up (with an error naming how far it got) after this many rounds."""

    def __post_init__(self) -> None:
        _ = self.instruction_decoding, self.answer_decoding  # Decoding checks the sampling settings
        if min(self.size, self.seed_examples, self.min_words, self.max_rounds) < 1:
            raise ValueError(f"size, seed_examples, min_words and max_rounds must be >= 1: {self}")
        if self.generated_examples < 0 or self.min_words > self.max_words or not 0 < self.max_similarity <= 1:
            raise ValueError(f"need generated_examples >= 0, min_words <= max_words, 0 < max_similarity <= 1: {self}")

    @property
    def instruction_decoding(self) -> Decoding:
        return sampling_decoding(self.prompts_per_round, self.instruction_max_new_tokens,
                                 self.instruction_temperature, self.instruction_top_p)

    @property
    def answer_decoding(self) -> Decoding:
        return sampling_decoding(self.answer_batch_size, self.answer_max_new_tokens, self.answer_temperature,
                                 self.answer_top_p)


def journal_path(output: str | Path) -> Path:
    return Path(output).with_name(f"{Path(output).name}.journal.jsonl")


def list_prompt(instructions: Sequence[str]) -> str:
    """Self-instruct's prompt: the instructions as a numbered list, then the next number for the model."""
    lines = "".join(f"{n}. {_one_line(text)}\n" for n, text in enumerate(instructions, 1))
    return f"{LIST_PROMPT_HEADER}{lines}{len(instructions) + 1}."


def parse_listed_instructions(completion: str, finished: bool) -> list[str]:
    """The instructions in the model's continuation of the list: split at "\\nN. ", up to the first blank line;
    the last one is dropped when sampling stopped at the token limit (it may be cut)."""
    text = completion.split(LIST_END, 1)[0]
    complete = finished or LIST_END in completion
    items = [_one_line(item) for item in re.split(r"\n\d+\s?\.\s", text)]
    if not complete:
        items = items[:-1]
    return [item for item in items if item]


def instruction_problem(text: str, config: PoolGenerationConfig) -> str | None:
    """Why a candidate instruction is unusable (a filter name), or None."""
    n_words = len(text.split())
    if n_words < config.min_words:
        return "too_short"
    if n_words > config.max_words:
        return "too_long"
    if any(re.search(rf"\b{word}\b", text, flags=re.IGNORECASE) for word in UNSUITABLE_WORDS):
        return "unsuitable_keyword"
    if text.startswith("Write a program"):
        return "write_a_program"
    if text[0] in string.punctuation or not text[0].isascii():
        return "bad_first_character"
    return None


def generate_pool(model: Any, tokenizer: Any, seed_instructions: Sequence[str], config: PoolGenerationConfig,
                  output: str | Path, *, progress: bool = True, info: dict[str, Any] | None = None) -> Path:
    """Grow a pool of `config.size` (instruction, answer) records from the seed instructions; see the module doc."""
    seeds = [_one_line(text) for text in seed_instructions]
    if len(seeds) < config.seed_examples:
        raise ValueError(f"{len(seeds)} seed instructions, fewer than the {config.seed_examples} each prompt shows")
    output = Path(output)
    identity = dict(language_model_identity(model))
    identity.pop("name_or_path", None)
    header = json_roundtrip({
        "delia": "self-instruct pool",
        "config": {k: v for k, v in asdict(config).items() if k not in ("size", "max_rounds")},
        "model": identity,
        "seeds": seeds,
    })
    started = time.monotonic()
    with Journal(journal_path(output), header) as journal:
        grower = _PoolGrower(model, tokenizer, seeds, config)
        grower.replay(journal.rows)
        with tqdm(total=config.size, initial=min(len(grower.kept), config.size), unit="instruction",
                  desc="self-instruct pool", disable=not progress) as bar:
            while len(grower.kept) < config.size:
                if grower.round >= config.max_rounds:
                    raise ValueError(f"only {len(grower.kept)} of {config.size} instructions after {grower.round} "
                                     f"rounds (filters: {dict(grower.stats)}); raise max_rounds (--max-rounds) or "
                                     "lower the size; rerunning resumes")
                before = len(grower.kept)
                journal.commit(grower.next_round())
                bar.update(min(len(grower.kept), config.size) - min(before, config.size))
    records = [{"id": f"synthetic-{n:05d}", "query": q, "answer": a, "synthetic": True}
               for n, (q, a) in enumerate(grower.kept[: config.size], 1)]
    atomic_write_jsonl(output, records)
    atomic_write_json(meta_path(output), {
        **{k: v for k, v in header.items() if k != "seeds"},
        "n_seed_instructions": len(seeds),
        "size": config.size,
        "rounds": grower.round,
        "filtered": dict(sorted(grower.stats.items())),
        "seconds_this_run": round(time.monotonic() - started, 1),
        "synthetic": "instructions and answers written by the model itself; see mm_excitor/delia/README.md",
        **({"info": info} if info is not None else {}),
    })
    return output


class _PoolGrower:
    """The state of the growing pool; `next_round()` returns the round's journal rows."""

    def __init__(self, model: Any, tokenizer: Any, seeds: list[str], config: PoolGenerationConfig) -> None:
        self.model, self.tokenizer, self.seeds, self.config = model, tokenizer, seeds, config
        self.kept: list[tuple[str, str]] = []
        self.stats: Counter[str] = Counter()
        self.round = 0
        self.index = NearDuplicateIndex(seeds, threshold=config.max_similarity)
        self.stop_ids = stop_token_ids(tokenizer, model)
        pad_id = pad_token_id(tokenizer, self.stop_ids)
        self.instruction_sampling = sampling_kwargs(config.instruction_decoding, self.stop_ids, pad_id)
        self.answer_sampling = sampling_kwargs(config.answer_decoding, self.stop_ids, pad_id)

    def replay(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if "stats" in row:
                self.stats.update(row["stats"])
                self.round = row["round"] + 1
            else:
                self._keep(row["query"], row["answer"])

    def next_round(self) -> list[dict[str, Any]]:
        stats: Counter[str] = Counter()
        candidates = self._candidate_instructions(stats)
        rows = []
        for start in range(0, len(candidates), self.config.answer_batch_size):
            chunk = candidates[start:start + self.config.answer_batch_size]
            prompts = [encode_chat_prompt(self.tokenizer, [{"role": "user", "content": q}]) for q in chunk]
            samples = sample_ids(self.model, prompts, self.answer_sampling,
                                 derive_seed("self-instruct answers", self.config.seed, self.round, start))
            for query, new_ids in zip(chunk, samples):
                answer, finish = decode_answer(self.tokenizer, new_ids, self.stop_ids)
                problem = self._answer_problem(query, answer, finish)
                if problem is None:
                    self._keep(query, answer)
                    rows.append({"round": self.round, "query": query, "answer": answer})
                    stats["kept"] += 1
                else:
                    stats[problem] += 1
        rows.append({"round": self.round, "stats": dict(stats)})
        self.stats.update(stats)
        self.round += 1
        return rows

    def _candidate_instructions(self, stats: Counter[str]) -> list[str]:
        rng = random.Random(derive_seed("self-instruct prompts", self.config.seed, self.round))
        prompts = []
        generated = [q for q, _ in self.kept]
        for _ in range(self.config.prompts_per_round):
            examples = (rng.sample(generated, min(self.config.generated_examples, len(generated)))
                        + rng.sample(self.seeds, self.config.seed_examples))
            rng.shuffle(examples)
            prompts.append(list(self.tokenizer(list_prompt(examples), add_special_tokens=True)["input_ids"]))
        samples = sample_ids(self.model, prompts, self.instruction_sampling,
                             derive_seed("self-instruct instructions", self.config.seed, self.round),
                             stop_text=(self.tokenizer, LIST_END))  # self-instruct's stop: a blank line
        candidates: list[str] = []
        batch_index = NearDuplicateIndex(threshold=self.config.max_similarity)
        for new_ids in samples:
            ids, finished = cut_at_stop(new_ids, self.stop_ids)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for candidate in parse_listed_instructions(text, finished):
                stats["candidates"] += 1
                problem = (instruction_problem(candidate, self.config) or self.index.match(candidate)
                           or batch_index.match(candidate))
                if problem is not None:
                    stats[problem] += 1
                    continue
                batch_index.add(candidate)
                candidates.append(candidate)
        return candidates

    def _answer_problem(self, query: str, answer: str, finish: str) -> str | None:
        if not answer:
            return "empty_answer"
        if finish == "length":
            return "answer_too_long"
        if rouge_l(words(answer), words(query)) > self.config.max_similarity:
            return "answer_copies_instruction"
        return None

    def _keep(self, query: str, answer: str) -> None:
        self.kept.append((query, answer))
        self.index.add(query)


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(":")

