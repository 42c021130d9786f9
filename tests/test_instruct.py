"""The instruct task: conversation batches that mix text-only and image records reach every method's visual input,
and train_instruct.py trains, checkpoints and evaluates end to end on the shipped sample files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data.collate import ChatCollator
from mm_excitor.methods import METHODS
from tests.delia.helpers import chat_tokenizer
from tests.tiny_models import TINY_ASSETS_CLIP, TINY_CLIP_CONFIG, tiny_method_model, tiny_model

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples" / "instruct"
CONVERSATIONS = [
    [{"role": "user", "content": "what colour is the circle ?"}, {"role": "assistant", "content": "red"},
     {"role": "user", "content": "and the square ?"}, {"role": "assistant", "content": "blue"}],
    [{"role": "system", "content": "answer in one sentence"}, {"role": "user", "content": "yes or no ?"},
     {"role": "assistant", "content": "yes"}],
    [{"role": "user", "content": "describe the image"}, {"role": "assistant", "content": "a small green triangle"}],
    [{"role": "user", "content": "two three ?"}, {"role": "assistant", "content": "three"}],
]
HAS_IMAGE = (True, False, True, False)


def mixed_items(scale: float) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for i, (messages, flag) in enumerate(zip(CONVERSATIONS, HAS_IMAGE)):
        item = {"messages": messages, "has_image": flag, "meta": {"id": str(i)}}
        if flag:
            item["visual_tokens"] = scale * torch.randn(5, 8, generator=generator) + (scale - 1)
        items.append(item)
    return items


@pytest.mark.parametrize("method", [method for method in sorted(METHODS) if METHODS[method].takes_images])
def test_a_mixed_batch_gives_image_rows_the_methods_visual_input_and_leaves_text_rows_alone(method):
    model = tiny_method_model(method)
    with torch.no_grad():  # off the zero init, as training leaves it, so that images can change the output
        generator = torch.Generator().manual_seed(3)
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    collator = ChatCollator(chat_tokenizer(), 64, blank={"visual_tokens": torch.zeros(5, 8)})
    first, second = collator(mixed_items(1.0)), collator(mixed_items(3.0))
    assert first.inputs["has_image"].tolist() == list(HAS_IMAGE) and first.inputs["visual_tokens"].shape == (4, 5, 8)
    assert first.num_label_tokens == 2 + 2 + 2 + 5 + 2  # every answer's words and its end-of-turn token
    a, b = model.label_log_likelihoods(**first.inputs), model.label_log_likelihoods(**second.inputs)
    assert torch.isfinite(a).all()
    change = (a - b).abs().tolist()
    for row, flag in enumerate(HAS_IMAGE):
        assert (change[row] > 1e-5) if flag else (change[row] < 1e-6), (method, row, change)
    loss = model(**first.inputs).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_language_only_method_refuses_a_mixed_batch_in_one_line():
    collator = ChatCollator(chat_tokenizer(), 64, blank={"visual_tokens": torch.zeros(5, 8)})
    with pytest.raises(ValueError, match="'text_prefix' method is language-only"):
        tiny_method_model("text_prefix")(**collator(mixed_items(1.0)).inputs)


def instruct_assets(root: Path) -> Path:
    """A tiny LM whose tokenizer has a chat template, and a tiny open_clip config."""
    tiny_model().save_pretrained(root / "lm")
    chat_tokenizer().save_pretrained(root / "lm")
    (root / f"{TINY_ASSETS_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    return root


def run_args(assets: Path, out: Path, method: str = "excitor") -> list[str]:
    return [
        f"model.language_model={assets / 'lm'}", f"model.vision.model_name={TINY_ASSETS_CLIP}",
        f"model.vision.model_config_file={assets / (TINY_ASSETS_CLIP + '.json')}", f"model.method={method}",
        "model.excitor.num_layers=2", "model.excitor.num_prompts=4", "model.excitor.rank=4",
        "model.excitor.visual_prompt_mode=concat", "model.lora.r=4",
        "model.llama_adapter.adapter_len=3", "model.llama_adapter.adapter_layers=2",
        "data.max_length=64", "data.eval_size=4", "data.val_size=2", f"data.image_root={SAMPLES / 'images'}",
        "train.max_steps=2", "train.warmup_steps=1", "train.batch_size=4", "train.lr=1e-2", "train.precision=fp32",
        f"train.output_dir={out}", "train.num_workers=0", "train.save_every_steps=2", "train.eval_every_steps=2",
        "train.progress_bar=false", "train.tensorboard=false", "train.device=cpu",
        "decoding.batch_size=8", "decoding.max_new_tokens=4",
    ]


def test_train_instruct_text_only_trains_and_scores_held_out_conversations(tmp_path):
    import train_instruct

    assets = instruct_assets(tmp_path / "assets")
    files = f"data.train_files=[{SAMPLES / 'alpaca.json'},{SAMPLES / 'messages.jsonl'}]"
    summary = train_instruct.main(run_args(assets, tmp_path / "run", "lora") + [files])
    assert set(summary["eval"]) == {"text"}
    metrics = summary["eval"]["text"]
    assert metrics["conversations"] == 4 and metrics["answer_nll"] > 0 and 0 <= metrics["exact_match"] <= 100
    answers = (tmp_path / "run" / "eval" / "step-2" / "text" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == 4 and {"id", "prompt", "text"} == set(json.loads(answers[0]))
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "adapter_model.safetensors").is_file()
    assert summary["data"]["examples"] == 2 * 4 and summary["data"]["too_long"] == 0

    resumed = train_instruct.main(run_args(assets, tmp_path / "run", "lora") + [files, "train.max_steps=3",
                                                                                 "train.resume=latest"])
    assert resumed["steps"] == 3 and set(resumed["eval"]) == {"text"}

    from tasks.generate import main as generate_cli

    output = tmp_path / "cli" / "answers.jsonl"
    generate_cli(["instruct", "--config", str(tmp_path / "run"), "--output", str(output), "--score"])
    assert len(output.read_text().splitlines()) == 4 and (output.parent / "instruct_scores.json").is_file()


def test_train_instruct_mixes_llava_images_with_text_and_scores_a_blind_control(tmp_path):
    import train_instruct

    assets = instruct_assets(tmp_path / "assets")
    files = f"data.train_files=[{SAMPLES / 'llava.json'},{SAMPLES / 'sharegpt.json'},{SAMPLES / 'alpaca.json'}]"
    held_out = f"data.eval_files=[{SAMPLES / 'llava.json'}]"
    summary = train_instruct.main(run_args(assets, tmp_path / "run") + [files, held_out])
    assert set(summary["eval"]) == {"image", "blind"}
    for run in ("image", "blind"):
        scores = json.loads((tmp_path / "run" / "eval" / "step-2" / run / "instruct_scores.json").read_text())
        assert len(scores["answers"]) == 5


def test_held_out_conversations_are_a_seeded_draw_disjoint_from_training():
    from tasks.instruct import InstructDataConfig, split_conversations

    config = InstructDataConfig(train_files=[str(SAMPLES / "messages.jsonl"), str(SAMPLES / "sharegpt.json")],
                                val_size=2, eval_size=3, split_seed=5)
    splits = split_conversations(config)
    ids = {name: [c.id for c in split] for name, split in splits.items()}
    assert [len(ids[n]) for n in ("train", "val", "eval")] == [5, 2, 3]
    assert not set(ids["train"]) & (set(ids["val"]) | set(ids["eval"])) and not set(ids["val"]) & set(ids["eval"])
    assert ids == {name: [c.id for c in split] for name, split in split_conversations(config).items()}
    with pytest.raises(ValueError, match="none is left to train on"):
        split_conversations(InstructDataConfig(train_files=config.train_files, eval_size=10))
