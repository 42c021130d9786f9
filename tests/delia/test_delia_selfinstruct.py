"""The self-instruct pool generator: list prompt and parsing, filters, de-duplication, rounds, resume, extension."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pycocoevalcap.rouge.rouge import my_lcs

from mm_excitor.delia import selfinstruct
from mm_excitor.delia.pools import load_pool
from mm_excitor.delia.selfinstruct import (LIST_PROMPT_HEADER, PoolGenerationConfig, generate_pool,
                                           instruction_problem, journal_path, list_prompt, meta_path,
                                           parse_listed_instructions)
from mm_excitor.delia.similarity import NearDuplicateIndex, normalised, rouge_l, words
from tests.tiny_models import tiny_model, tiny_tokenizer

SEEDS = ["Explain why the sky looks blue.", "List five fruits that are rich in vitamin C.",
         "Write a haiku about autumn leaves.", "What is 15% of 80?", "Translate 'thank you' into Spanish.",
         "Give me three tips for sleeping better.", "Summarise the story of Cinderella in two sentences."]


def test_list_prompt_is_self_instructs() -> None:
    assert list_prompt(["Say hi:", "Name  a\ncolour."]) == ("Come up with a series of tasks:\n1. Say hi\n"
                                                             "2. Name a colour.\n3.")


def test_parse_listed_instructions() -> None:
    text = " Name three rivers.\n10. Explain tides to a child.\n11 . Write a poem\n\n12. after the blank line"
    assert parse_listed_instructions(text, finished=False) == [
        "Name three rivers.", "Explain tides to a child.", "Write a poem"]  # complete: the list ended
    assert parse_listed_instructions(" Name three rivers.\n10. Explain ti", finished=False) == ["Name three rivers."]
    assert parse_listed_instructions(" Name three rivers.\n10. Explain tides.", finished=True) == [
        "Name three rivers.", "Explain tides."]


@pytest.mark.parametrize(("text", "problem"), [
    ("Name three rivers in Africa.", None),
    ("Name rivers.", "too_short"),
    ("Describe " + "very " * 70 + "long things.", "too_long"),
    ("Describe the image in detail please.", "unsuitable_keyword"),
    ("Explain how to go to the station.", "unsuitable_keyword"),
    ("Write a program that adds numbers.", "write_a_program"),
    ("- List some nice animals please", "bad_first_character"),
    ("Écrivez une phrase en français.", "bad_first_character"),
])
def test_instruction_filters(text: str, problem: str | None) -> None:
    assert instruction_problem(text, PoolGenerationConfig()) == problem


def test_rouge_l_is_the_lcs_f1() -> None:
    rng = random.Random(0)
    vocab = "a b c d e f".split()
    for _ in range(200):
        a = [rng.choice(vocab) for _ in range(rng.randint(1, 9))]
        b = [rng.choice(vocab) for _ in range(rng.randint(1, 9))]
        assert rouge_l(a, b) == pytest.approx(2 * my_lcs(a, b) / (len(a) + len(b)))
    assert words("Hello, World! 42x") == ["hello", "world", "42x"] and normalised(" A-b ") == "a b"


def test_near_duplicates() -> None:
    index = NearDuplicateIndex(["Explain why the sky looks blue."])
    assert index.match("explain why the SKY looks blue") == "duplicate"
    assert index.match("Explain why the sky looks so blue today.") == "similar"
    assert index.match("List three fruits.") is None


class ScriptedLM:
    """Tokenizer and sampler in one: a prompt's ids are the index of its text, a sample is a scripted reply.

    Instruction prompts get replies from `script`, picked by the round's seed; answer prompts get `answers[query]`
    or a generic answer. A reply is (text, finished): finished replies end with the EOS id 0."""

    eos_token_id = pad_token_id = 0
    chat_template = None
    all_special_ids = [0]

    def __init__(self, script: list[tuple[str, bool]], answers: dict[str, tuple[str, bool]]) -> None:
        self.script, self.answers, self.texts = script, answers, ["<eos>"]
        self.sampled_rounds = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        self.texts.append(text)
        return {"input_ids": [len(self.texts) - 1]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.texts[i] for i in ids if i != 0)

    def sample_ids(self, model, prompts, generate_kwargs, seed, stop_text=None) -> list[list[int]]:
        rng, out = random.Random(seed), []
        for ids in prompts:
            prompt = self.texts[ids[0]]
            if prompt.startswith(LIST_PROMPT_HEADER):
                text, finished = self.script[rng.randrange(len(self.script))]
            else:
                query = prompt.removeprefix("User: ").removesuffix("\nAssistant:")
                text, finished = self.answers.get(query, ("It depends on the situation.", True))
            out.append(self(text)["input_ids"] + ([0] if finished else []))
        if any(self.texts[ids[0]].startswith(LIST_PROMPT_HEADER) for ids in prompts):
            self.sampled_rounds += 1
        return out


SCRIPT = [
    (" Name three rivers in South America.\n10. Explain why the sky looks blue.\n11. Draw a cat", False),
    (" Suggest a name for a pet turtle.\n10. Explain why the sky looks so blue today.", True),
    (" Describe a sunny beach in two sentences.\n10. - Bad start here please", True),
    (" List four kinds of trees.\n10. Give an example of a prime number.", True),
    (" Explain how a bicycle stays upright.\n10. Name two famous painters.", True),
    (" Tell me a fun fact about octopuses.", True),
]
ANSWERS = {
    "Suggest a name for a pet turtle.": ("", True),
    "List four kinds of trees.": ("Oak, pine, birch and", False),
    "Give an example of a prime number.": ("Give an example of a prime number.", True),
}


@pytest.fixture
def scripted(monkeypatch):
    lm = ScriptedLM(SCRIPT, ANSWERS)
    monkeypatch.setattr(selfinstruct, "sample_ids", lm.sample_ids)
    return lm


def make_pool(lm, out: Path, size: int, **kwargs) -> list[dict]:
    config = PoolGenerationConfig(size=size, prompts_per_round=2, seed_examples=3, **kwargs)
    generate_pool(tiny_model(), lm, SEEDS, config, out, progress=False)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_pool_keeps_only_new_instructions_with_finished_answers(tmp_path: Path, scripted) -> None:
    records = make_pool(scripted, tmp_path / "pool.jsonl", 5)
    queries = [r["query"] for r in records]
    assert sorted(queries) == sorted(["Name three rivers in South America.", "Describe a sunny beach in two sentences.",
                                      "Explain how a bicycle stays upright.", "Name two famous painters.",
                                      "Tell me a fun fact about octopuses."])
    assert [r["id"] for r in records] == [f"synthetic-{n:05d}" for n in range(1, 6)]
    assert all(r["answer"] == "It depends on the situation." and r["synthetic"] is True for r in records)
    meta = json.loads(meta_path(tmp_path / "pool.jsonl").read_text())
    filtered = meta["filtered"]
    assert filtered["kept"] >= 5 and filtered["duplicate"] >= 1 and filtered["similar"] >= 1
    assert filtered["bad_first_character"] >= 1 and filtered["empty_answer"] >= 1
    assert filtered["answer_too_long"] >= 1 and filtered["answer_copies_instruction"] >= 1
    assert "unsuitable_keyword" not in filtered  # "Draw a cat" was the cut last line: never a candidate
    assert load_pool(tmp_path / "pool.jsonl").format == "qa"
    assert "synthetic" in meta and meta["size"] == 5


def test_resume_and_extension_give_the_uninterrupted_pool(tmp_path: Path, monkeypatch) -> None:
    def scripted_lm() -> ScriptedLM:
        lm = ScriptedLM(SCRIPT, ANSWERS)
        monkeypatch.setattr(selfinstruct, "sample_ids", lm.sample_ids)
        return lm

    lm = scripted_lm()
    full = make_pool(lm, tmp_path / "full.jsonl", 5)
    rounds = lm.sampled_rounds

    out = tmp_path / "part.jsonl"
    assert make_pool(scripted_lm(), out, 2) == full[:2]  # a smaller pool first, then extended
    with open(journal_path(out), "a") as f:  # and a crash in the middle of writing a round
        f.write('{"round": 99, "query": "Torn away", "answer": "x"}\n{"round"')
    lm = scripted_lm()
    assert make_pool(lm, out, 5) == full
    assert lm.sampled_rounds < rounds  # the rounds of the first run were not sampled again


def test_other_settings_are_not_resumed_and_too_few_rounds_is_an_error(tmp_path: Path, scripted) -> None:
    out = tmp_path / "pool.jsonl"
    make_pool(scripted, out, 2)
    with pytest.raises(ValueError, match=r"\(config\.max_similarity: journal 0\.7, now 0\.5\)"):
        make_pool(scripted, out, 2, max_similarity=0.5)
    with pytest.raises(ValueError, match=r"only \d of 50 instructions after 3 rounds .* rerunning resumes"):
        make_pool(scripted, tmp_path / "other.jsonl", 50, max_rounds=3)


def test_too_few_seeds_is_an_error(tmp_path: Path, scripted) -> None:
    with pytest.raises(ValueError, match="2 seed instructions, fewer than the 6"):
        generate_pool(tiny_model(), scripted, SEEDS[:2], PoolGenerationConfig(size=1), tmp_path / "p.jsonl")


def test_runs_with_a_real_model_end_to_end(tmp_path: Path) -> None:
    """The tiny random LM writes nonsense, but the pipeline (stop strings, chat prompts, filters) runs through."""
    seeds = ["describe the red circle in one sentence", "is the square blue or green ?", "answer yes or no",
             "two small triangles left of a circle", "what is the large yellow square", "the image caption"]
    config = PoolGenerationConfig(size=2, seed_examples=3, prompts_per_round=4, instruction_max_new_tokens=12,
                                  answer_max_new_tokens=48, min_words=1, max_similarity=0.9, max_rounds=200)
    out = generate_pool(tiny_model(), tiny_tokenizer(), seeds, config, tmp_path / "pool.jsonl", progress=False)
    records = load_pool(out).records
    assert len(records) == 2 and len({normalised(r.query) for r in records}) == 2
    assert all(r.query and r.answer and instruction_problem(r.query, config) is None for r in records)
