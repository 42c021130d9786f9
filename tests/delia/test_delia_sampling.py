"""Self-sampling on a tiny random LLaMA: exact sampling settings, seeds, resume after a crash, ranks, merge."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm_excitor.delia.chat import encode_chat_prompt, one_shot_messages
from mm_excitor.journal import Journal
from mm_excitor.delia.sampling import SamplingConfig, meta_path, part_path, read_samples, sample_answers
from tests.delia.helpers import chat_tokenizer, pool_records
from tests.tiny_models import tiny_model

CONFIG = SamplingConfig(max_new_tokens=10, batch_size=3, seed=5)


def run(model, tokenizer, out: Path, records=None, config: SamplingConfig = CONFIG, **kwargs) -> Path | None:
    return sample_answers(model, tokenizer, pool_records() if records is None else records, config, out,
                          progress=False, **kwargs)


def crash_after(model, n_batches: int) -> list[int]:
    """Make `model.generate` raise once it has sampled `n_batches` batches; returns the list of batch sizes seen."""
    original, calls = model.generate, []

    def generate(*args, **kwargs):
        if len(calls) >= n_batches:
            raise RuntimeError("simulated crash")
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    model.generate = generate
    return calls


def reference_answer(model, tokenizer, prompt: list[int], seed: int, config: SamplingConfig) -> str:
    """Temperature + nucleus sampling written out by hand, one prompt, no cache: what one sampled answer must be."""
    torch.manual_seed(seed)
    ids, new = list(prompt), []
    with torch.no_grad():
        for _ in range(config.max_new_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1].float() / config.temperature
            probs = logits.softmax(-1)
            order = probs.argsort(descending=True)
            mass_before = probs[order].cumsum(0) - probs[order]
            keep = order[mass_before < config.top_p]  # the smallest top set holding top_p of the mass
            filtered = torch.full_like(logits, float("-inf"))
            filtered[keep] = logits[keep]
            token = int(torch.multinomial(filtered.softmax(-1)[None], 1)[0, 0])
            if token == tokenizer.eos_token_id:
                break
            ids.append(token)
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_samples_are_plain_temperature_top_p_sampling_whatever_the_model_config_says(tmp_path: Path) -> None:
    from mm_excitor.delia.generate import derive_seed

    model, tokenizer = tiny_model(seed=1), chat_tokenizer()
    model.generation_config.top_k = 3  # must not leak into DELIA's sampling
    model.generation_config.repetition_penalty = 1.8
    records = pool_records(4)
    config = SamplingConfig(max_new_tokens=12, batch_size=1, seed=3)
    out = run(model, tokenizer, tmp_path / "s.jsonl", records, config)
    samples = read_samples(out)
    for batch, (record, sample) in enumerate(zip(records, samples)):
        prompt = encode_chat_prompt(tokenizer, one_shot_messages(record.query, record.answer))
        expected = reference_answer(model, tokenizer, prompt, derive_seed("delia-self-sample", 3, batch), config)
        assert sample["messages"] == [{"role": "user", "content": record.query},
                                      {"role": "assistant", "content": expected}]
    assert len({s["messages"][1]["content"] for s in samples}) > 1


def test_batches_are_left_padded(tmp_path: Path, model) -> None:
    """Near-zero temperature makes sampling greedy: a padded batch must answer as each prompt does alone."""
    tokenizer, records = chat_tokenizer(), pool_records(6)
    config = SamplingConfig(max_new_tokens=8, batch_size=6, temperature=1e-6)
    samples = read_samples(run(model, tokenizer, tmp_path / "s.jsonl", records, config))
    for record, sample in zip(records, samples):
        prompt = torch.tensor([encode_chat_prompt(tokenizer, one_shot_messages(record.query, record.answer))])
        greedy = model.generate(prompt, do_sample=False, max_new_tokens=8, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)[0, prompt.shape[1]:].tolist()
        greedy = greedy[: greedy.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in greedy else greedy
        assert sample["messages"][1]["content"] == tokenizer.decode(greedy, skip_special_tokens=True).strip()


def test_output_format_meta_and_reproducibility(tmp_path: Path, model) -> None:
    tokenizer = chat_tokenizer()
    first = run(model, tokenizer, tmp_path / "a" / "s.jsonl")
    again = run(model, tokenizer, tmp_path / "b" / "s.jsonl")
    other_seed = run(model, tokenizer, tmp_path / "c" / "s.jsonl", config=SamplingConfig(max_new_tokens=10,
                                                                                         batch_size=3, seed=6))
    assert first.read_bytes() == again.read_bytes() != other_seed.read_bytes()
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(7)]
    assert all(set(r) == {"id", "messages", "finish"} and r["finish"] in ("stop", "length") for r in rows)
    assert [r["messages"][0]["content"] for r in rows] == [r.query for r in pool_records()]
    meta = json.loads(meta_path(first).read_text())
    assert meta["n_samples"] == 7 and meta["config"]["temperature"] == 0.7 and meta["config"]["top_p"] == 0.95
    assert meta["n_finished_by_length"] == sum(r["finish"] == "length" for r in rows)
    assert meta_path(first).name == "s.meta.json"


def test_resume_after_a_crash_gives_the_uninterrupted_file(tmp_path: Path) -> None:
    tokenizer = chat_tokenizer()
    expected = run(tiny_model(), tokenizer, tmp_path / "full" / "s.jsonl").read_bytes()
    model, out = tiny_model(), tmp_path / "crash" / "s.jsonl"
    crash_after(model, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(model, tokenizer, out)
    assert not out.exists()
    with open(part_path(out, 0), "a") as f:  # the crash also left half a batch and a torn line behind
        f.write(json.dumps({"index": 6, "id": "r6", "finish": "stop", "messages": []}) + "\n{\"index\": 7, \"id")
    model = tiny_model()
    calls = crash_after(model, 99)
    assert run(model, tokenizer, out) == out
    assert calls == [1]  # only the last batch (record 6) was sampled again
    assert out.read_bytes() == expected
    assert json.loads(meta_path(out).read_text())["n_duplicate_rows"] == 0


def test_a_finished_run_reruns_without_sampling(tmp_path: Path) -> None:
    tokenizer, out = chat_tokenizer(), tmp_path / "s.jsonl"
    expected = run(tiny_model(), tokenizer, out).read_bytes()
    model = tiny_model()
    calls = crash_after(model, 0)
    assert run(model, tokenizer, out) == out and calls == [] and out.read_bytes() == expected


def test_resuming_with_other_settings_is_refused(tmp_path: Path, model) -> None:
    tokenizer, out = chat_tokenizer(), tmp_path / "s.jsonl"
    run(model, tokenizer, out)
    with pytest.raises(ValueError, match=r"s\.jsonl\.rank0\.jsonl was written with other settings "
                                         r"\(config\.seed: journal 5, now 6\); delete it"):
        run(model, tokenizer, out, config=SamplingConfig(max_new_tokens=10, batch_size=3, seed=6))
    with pytest.raises(ValueError, match=r"\(pool\.records: journal 7, now 8; pool\.sha256: journal '\w+', now"):
        run(model, tokenizer, out, records=pool_records(8))


def test_two_ranks_merge_to_the_single_rank_file(tmp_path: Path, model) -> None:
    tokenizer = chat_tokenizer()
    expected = run(model, tokenizer, tmp_path / "one" / "s.jsonl").read_bytes()
    out = tmp_path / "two" / "s.jsonl"
    assert run(model, tokenizer, out, rank=1, world_size=2) is None and not out.exists()
    assert run(model, tokenizer, out, rank=0, world_size=2) == out
    assert out.read_bytes() == expected
    assert json.loads(meta_path(out).read_text())["parts"] == ["s.jsonl.rank0.jsonl", "s.jsonl.rank1.jsonl"]


def test_a_run_resumed_with_another_world_size_keeps_every_committed_batch(tmp_path: Path) -> None:
    tokenizer = chat_tokenizer()
    expected = run(tiny_model(), tokenizer, tmp_path / "one" / "s.jsonl").read_bytes()
    out = tmp_path / "mixed" / "s.jsonl"
    assert run(tiny_model(), tokenizer, out, rank=1, world_size=2) is None  # batch 1 done by "rank 1 of 2"
    model = tiny_model()
    calls = crash_after(model, 99)
    assert run(model, tokenizer, out) == out  # one process finishes the rest
    assert calls == [3, 1] and out.read_bytes() == expected


def test_long_prompts_are_skipped_and_counted_and_limit_takes_a_prefix(tmp_path: Path, model) -> None:
    tokenizer, records = chat_tokenizer(), pool_records(7)
    lengths = [len(encode_chat_prompt(tokenizer, one_shot_messages(r.query, r.answer))) for r in records]
    limit = sorted(lengths)[-2] - 1  # the two longest prompts do not fit
    out = run(model, tokenizer, tmp_path / "s.jsonl", records,
              SamplingConfig(max_new_tokens=4, batch_size=3, max_prompt_tokens=limit, limit=6))
    kept = [r.id for r, n in zip(records[:6], lengths[:6]) if n <= limit]
    assert [s["id"] for s in read_samples(out)] == kept
    meta = json.loads(meta_path(out).read_text())
    assert meta["n_skipped_prompts"] == 6 - len(kept) and meta["pool"]["records"] == 6
    assert all("more than" in s["reason"] for s in meta["skipped_prompts"])


def test_prompt_room_is_checked_against_the_models_positions(tmp_path: Path, model) -> None:
    with pytest.raises(ValueError, match="max_new_tokens=300 leaves no room for a prompt in the model's 256"):
        run(model, chat_tokenizer(), tmp_path / "s.jsonl", config=SamplingConfig(max_new_tokens=300))


def test_plain_template_models_sample_too(tmp_path: Path, model, plain_tokenizer) -> None:
    samples = read_samples(run(model, plain_tokenizer, tmp_path / "s.jsonl"))
    assert len(samples) == 7 and all("User:" not in s["messages"][1]["content"] for s in samples)


@pytest.mark.parametrize("kwargs", [{"temperature": 0}, {"top_p": 1.5}, {"batch_size": 0}, {"limit": 0}])
def test_invalid_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_read_samples_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
                    '{"query": "q", "answer": "a"}\n')
    with pytest.raises(ValueError, match=r"x\.jsonl: line 2: not a self-sampled record"):
        read_samples(path)
    with pytest.raises(FileNotFoundError, match="python -m mm_excitor.delia sample"):
        read_samples(tmp_path / "missing.jsonl")


def test_journal_keeps_only_whole_commits(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path, {"a": (1, 2)}) as journal:
        journal.commit([{"x": 1}, {"x": 2}])
    with open(path, "a") as f:
        f.write('{"x": 3}\n{"commit"')
    with Journal(path, {"a": [1, 2]}) as journal:  # the header compares as JSON
        assert journal.rows == [{"x": 1}, {"x": 2}]
        journal.commit([{"x": 4}])
    lines = path.read_text().splitlines()
    assert lines[-2:] == ['{"x": 4}', '{"commit": 1}'] and '{"x": 3}' not in lines


def test_a_model_in_training_mode_is_refused(tmp_path: Path) -> None:
    model = tiny_model().train()
    with pytest.raises(ValueError, match="training mode"):
        run(model, chat_tokenizer(), tmp_path / "s.jsonl")
