"""Tiny fixtures for the trainer tests: a synthetic token dataset and its collate function, a tiny model."""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from data.sampler import ResumableSampler
from mm_excitor import ExcitorConfig, apply_excitor, excitor_blocks
from mm_excitor.train import Batch, TrainConfig
from tests.tiny_models import tiny_model

SEQ_LEN = 12
VOCAB = 96
POISON = 2  # a token id TokenDataset's sequences never hold: items marked `poisoned` carry it
N_V, D_V = 5, 8  # visual tokens per image and their width, as a tiny feature cache would hold them


class TokenDataset(torch.utils.data.Dataset):
    """Item i: an arithmetic token sequence (so there is something to learn) whose first tokens are the prompt: 3
    of them, or 3 to 9 with `variable_prompts` (label counts then differ between items, batches and ranks).

    With `image_every=k` every k-th item has visual tokens (a fixed random N_V x D_V per item, as a feature cache
    would give) and the others are text-only; `image_every=0` makes every item text-only (a multimodal model's
    batches then hold only blank rows). Items in `poisoned` carry the POISON token (see inf_loss_on_poison)."""

    def __init__(self, n: int, offset: int = 0, variable_prompts: bool = False, image_every: int | None = None,
                 poisoned: Collection[int] = ()) -> None:
        self.n, self.offset, self.variable_prompts, self.image_every = n, offset, variable_prompts, image_every
        self.poisoned = set(poisoned)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        i += self.offset
        start, stride = 3 + (i * 7) % 80, 1 + i % 3
        ids = torch.tensor([1] + [3 + (start + stride * t) % (VOCAB - 3) for t in range(SEQ_LEN - 1)])
        if i in self.poisoned:
            ids[5] = POISON
        prompt = 3 + (i * 5) % 7 if self.variable_prompts else 3
        item = {"input_ids": ids, "prompt_length": prompt, "meta": {"index": i}}
        if self.image_every is not None:
            item["has_image"] = bool(self.image_every) and i % self.image_every == 0
            if item["has_image"]:
                item["visual_tokens"] = torch.randn(N_V, D_V, generator=torch.Generator().manual_seed(i))
        return item


def inf_loss_on_poison(model: torch.nn.Module) -> torch.nn.Module:
    """Make the loss inf (and so the gradients inf/nan) for a batch holding the POISON token, as an overflow would."""
    def hook(_module, _args, kwargs, output):
        if (kwargs["input_ids"] == POISON).any():
            output.loss = output.loss * float("inf")
        return output

    model.register_forward_hook(hook, with_kwargs=True)
    return model


def collate(items: list[dict[str, Any]]) -> Batch:
    ids = torch.stack([item["input_ids"] for item in items])
    labels = ids.clone()
    for row, item in enumerate(items):
        labels[row, : item["prompt_length"]] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if "has_image" in items[0]:
        inputs["has_image"] = torch.tensor([item["has_image"] for item in items])
        inputs["visual_tokens"] = torch.stack([item.get("visual_tokens", torch.zeros(N_V, D_V)) for item in items])
    return Batch(inputs=inputs, num_items=len(items), num_label_tokens=int((labels[:, 1:] != -100).sum()),
                 num_tokens=ids.numel(), meta=[item["meta"] for item in items])


def make_sampler(num_items: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> ResumableSampler:
    """The sampler the entry points use."""
    return ResumableSampler(num_items, seed=seed, rank=rank, world_size=world_size)


def make_model(seed: int = 0, dropout: float = 0.0, base_seed: int | None = None) -> torch.nn.Module:
    """Tiny LLaMA + Excitor on its top 2 layers; gates start open (0.5) so every trainable tensor gets gradient."""
    model = tiny_model("llama-gqa", seed=seed if base_seed is None else base_seed, attention_dropout=dropout)
    torch.manual_seed(seed + 1)
    apply_excitor(model, ExcitorConfig(num_layers=2, num_prompts=4, rank=4))
    with torch.no_grad():
        for block in excitor_blocks(model):
            block.gate.fill_(0.5)
    return model


def make_multimodal_model(seed: int = 0) -> torch.nn.Module:
    """The multimodal Excitor on the tiny LLaMA, fed N_V x D_V visual tokens (no encoder: as from a feature cache)."""
    from mm_excitor.methods.excitor import MultimodalExcitor
    from tests.tiny_models import tiny_tokenizer

    base = tiny_model("llama-gqa", seed=0)
    torch.manual_seed(seed + 1)
    model = MultimodalExcitor(base, tiny_tokenizer(), ExcitorConfig(num_layers=2, num_prompts=4, rank=4,
                                                                    visual_prompt_mode="concat"),
                              vision_identity={"model_name": "tiny-cache", "num_tokens": N_V, "width": D_V})
    with torch.no_grad():
        for block in excitor_blocks(model):
            block.gate.fill_(0.5)
    return model


def make_method_model(method: str, base: torch.nn.Module | None = None) -> torch.nn.Module:
    """Any method (`model.method`) on the tiny LLaMA (or a copy of `base`), fed N_V x D_V visual tokens; LoRA
    without dropout, so that 2 ranks draw no other dropout masks than 1 process."""
    import dataclasses

    from tests.tiny_models import tiny_method_config, tiny_method_model

    config = tiny_method_config()
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, dropout=0.0))
    return tiny_method_model(method, base, config=config, seed=1)


def make_config(output_dir: Path, **overrides: Any) -> TrainConfig:
    values = dict(
        output_dir=str(output_dir), blr=0.5, batch_size=4, max_steps=8, warmup_steps=2, precision="fp32",
        save_every_steps=100, eval_every_steps=100, log_every_steps=1, keep_last=2, tensorboard=False,
        progress_bar=False, num_workers=0, device="cpu", seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(output_dir: Path, kind: str = "train") -> list[dict[str, Any]]:
    import json

    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory) / "adapter_model.safetensors"))
