"""The shared generation loop with a fake model: batching, resume after a crash, 2-rank sharding and merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data.collate import Collator
from eval.generation import done_path, generate_outputs, meta_path, part_path
from eval.scienceqa import load_predictions
from mm_excitor.decoding import Decoding
from tasks import get_task
from tests.tiny_models import WORDS, tiny_tokenizer

TOKENIZER = tiny_tokenizer()


class FakeModel:
    """Deterministic `generate` that records what it was given; raises once `fail_after` batches are done."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.calls: list[dict] = []

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None = None,
                 visual_tokens: torch.Tensor | None = None, has_image: torch.Tensor | None = None, *,
                 decoding: Decoding) -> list[str]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        assert bool((attention_mask[:, -1] == 1).all()), "prompts must be left-padded"
        prompts = [TOKENIZER.decode(ids[mask.bool()], skip_special_tokens=True)
                   for ids, mask in zip(input_ids, attention_mask)]
        self.calls.append({"prompts": prompts, "images": images, "visual_tokens": visual_tokens,
                           "has_image": has_image, "decoding": decoding})
        return [f"  a photo of\n{p}  " for p in prompts]

    @property
    def prompts(self) -> list[str]:
        return [p for call in self.calls for p in call["prompts"]]


def caption_items(n: int = 7) -> list[dict]:
    return [{"prompt": WORDS[i], "image": torch.full((3, 2, 2), float(i)), "has_image": True,
             "meta": {"image_id": 100 + i}} for i in range(n)]


def expected(ids: range | list[int]) -> list[dict]:
    return [{"image_id": 100 + i, "caption": f"a photo of {WORDS[i]}"} for i in ids]


SETTINGS = Decoding(batch_size=3, num_beams=2, max_new_tokens=20, min_new_tokens=1)


def generate_captions(model, items, *, output, decoding=SETTINGS, **kwargs):
    caption = get_task("caption")
    return generate_outputs(model, items, Collator(TOKENIZER, 64), task="caption", id_key="image_id",
                            decoding=decoding, output=output, write_output=caption.write_outputs, **kwargs)


def generate_answers(model, items, *, output, decoding=SETTINGS, **kwargs):
    scienceqa = get_task("scienceqa")
    return generate_outputs(model, items, Collator(TOKENIZER, 64), task="scienceqa", id_key="pid",
                            decoding=decoding, output=output, write_output=scienceqa.write_outputs, **kwargs)


def test_batches_go_to_the_model_and_results_are_official(tmp_path: Path) -> None:
    model, out = FakeModel(), tmp_path / "res.json"
    assert generate_captions(model, caption_items(), output=out) == out
    assert [len(c["prompts"]) for c in model.calls] == [3, 3, 1]
    first = model.calls[0]
    assert first["images"].shape == (3, 3, 2, 2) and first["images"][2].max() == 2.0
    assert first["visual_tokens"] is None and first["has_image"].tolist() == [True] * 3
    assert first["decoding"] == SETTINGS
    assert json.loads(out.read_text()) == expected(range(7))  # whitespace and newlines collapsed
    meta = json.loads(meta_path(out).read_text())
    assert meta["decoding"] == SETTINGS.as_dict() and (meta["world_size"], meta["n_outputs"]) == (1, 7)
    assert meta_path(out).name == "res.meta.json"


def test_resume_after_a_crash_generates_only_the_rest(tmp_path: Path) -> None:
    out, items = tmp_path / "res.json", caption_items()
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_captions(FakeModel(fail_after=1), items, output=out)
    assert not out.exists() and not done_path(out, 0).exists()
    with open(part_path(out, 0), "a") as f:  # the crash also cut a line in half
        f.write('{"index": 3, "id": 103, "te')
    model = FakeModel()
    assert generate_captions(model, items, output=out) == out
    assert model.prompts == [WORDS[i] for i in range(3, 7)]
    assert json.loads(out.read_text()) == expected(range(7))


def test_resume_refuses_other_decoding_settings(tmp_path: Path) -> None:
    out, items = tmp_path / "res.json", caption_items()
    with pytest.raises(RuntimeError):
        generate_captions(FakeModel(fail_after=1), items, output=out)
    with pytest.raises(ValueError, match="--no-resume"):
        generate_captions(FakeModel(), items, output=out, decoding=Decoding(3, 1, 20, 1))
    model = FakeModel()
    generate_captions(model, items, output=out, decoding=Decoding(3, 1, 20, 1), resume=False)
    assert len(model.prompts) == 7


@pytest.mark.parametrize("order", [(1, 0), (0, 1)])
def test_two_ranks_shard_by_index_and_the_last_one_merges(tmp_path: Path, order: tuple[int, int]) -> None:
    out, items = tmp_path / "res.json", caption_items()
    models = {}
    returned = {}
    for rank in order:
        models[rank] = FakeModel()
        returned[rank] = generate_captions(models[rank], items, output=out, rank=rank, world_size=2)
    assert returned == {order[0]: None, order[1]: out}
    assert models[0].prompts == [WORDS[i] for i in (0, 2, 4, 6)]
    assert models[1].prompts == [WORDS[i] for i in (1, 3, 5)]
    assert json.loads(out.read_text()) == expected(range(7))
    assert json.loads(meta_path(out).read_text())["world_size"] == 2


def test_merge_keeps_one_output_per_id(tmp_path: Path) -> None:
    items = caption_items(4)
    items[3]["meta"] = {"image_id": 100}  # a per-caption dataset repeats image ids
    model, out = FakeModel(), tmp_path / "one.json"
    generate_captions(model, items, output=out)
    assert len(model.prompts) == 3  # the repeat is skipped within a rank
    out2 = tmp_path / "two.json"  # across ranks both are generated; the merge keeps the first in dataset order
    for rank in (0, 1):
        generate_captions(FakeModel(), items, output=out2, rank=rank, world_size=2)
    assert json.loads(out2.read_text()) == expected(range(3))
    assert json.loads(meta_path(out2).read_text())["n_duplicate_ids"] == 1


def test_torch_distributed_barrier_then_rank0_merges(tmp_path: Path) -> None:
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        out = tmp_path / "res.json"
        with pytest.raises(ValueError, match="disagree with torch.distributed"):
            generate_captions(FakeModel(), caption_items(), output=out, rank=0, world_size=2)
        assert generate_captions(FakeModel(), caption_items(), output=out) == out
    finally:
        dist.destroy_process_group()
    assert json.loads(out.read_text()) == expected(range(7))


def test_text_only_items_get_zero_visual_tokens_and_skipped_items_are_counted(tmp_path: Path) -> None:
    items = [{"prompt": "a", "visual_tokens": torch.ones(4, 8), "has_image": True, "meta": {"pid": "1"}},
             {"prompt": "red", "visual_tokens": torch.ones(4, 8), "has_image": False, "meta": {"pid": "2"}},
             None,  # the dataset skipped an unreadable image
             {"prompt": "green", "has_image": False, "meta": {"pid": "4"}}]
    model, out = FakeModel(), tmp_path / "a.jsonl"
    generate_answers(model, items, output=out, decoding=Decoding(4, 1, 8, 0))
    call = model.calls[0]
    assert call["images"] is None and call["visual_tokens"].shape == (3, 4, 8)
    assert call["visual_tokens"].sum(dim=(1, 2)).tolist() == [32.0, 0.0, 0.0]
    assert call["has_image"].tolist() == [True, False, False]
    assert json.loads(meta_path(out).read_text())["n_skipped_items"] == 1
    assert [json.loads(line)["question_id"] for line in out.read_text().splitlines()] == ["1", "2", "4"]


def test_scienceqa_answers_are_llava_style_jsonl_and_score(tmp_path: Path) -> None:
    class Answerer(FakeModel):
        def generate(self, input_ids: torch.Tensor, *args: object, **kwargs: object) -> list[str]:
            super().generate(input_ids, *args, **kwargs)
            return ["The answer is B.", "A", "no idea"][: len(input_ids)]

    items = [{"prompt": word, "has_image": False, "meta": {"pid": str(p), "num_choices": 2}}
             for p, word in zip((5, 6, 7), ("red", "green", "blue"))]
    out = tmp_path / "answers.jsonl"
    assert generate_answers(Answerer(), items, output=out, decoding=Decoding(3, 1, 8, 0)) == out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"question_id": "5", "prompt": "red", "text": "The answer is B."},
                    {"question_id": "6", "prompt": "green", "text": "A"},
                    {"question_id": "7", "prompt": "blue", "text": "no idea"}]
    problems = {p: {"choices": ["x", "y"]} for p in ("5", "6", "7")}
    assert load_predictions(out, problems) == ({"5": 1, "6": 0, "7": -1}, {"7": "no idea"})
