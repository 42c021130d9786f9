"""Tiny fixtures for the trainer tests: a synthetic token dataset, a protocol-following sampler, a tiny model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mm_excitor import ExcitorConfig, apply_excitor, excitor_blocks
from mm_excitor.train import TrainConfig
from tests.tiny_models import tiny_model

SEQ_LEN = 12
VOCAB = 96


class TokenDataset(torch.utils.data.Dataset):
    """Item i: an arithmetic token sequence (so there is something to learn) whose first 3 tokens are the prompt."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        i += self.offset
        start, stride = 3 + (i * 7) % 80, 1 + i % 3
        ids = torch.tensor([1] + [3 + (start + stride * t) % (VOCAB - 3) for t in range(SEQ_LEN - 1)])
        return {"input_ids": ids, "meta": {"index": i}}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    ids = torch.stack([item["input_ids"] for item in items])
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "meta": [item["meta"] for item in items]}


class ListSampler:
    """A stand-in for data/sampler.py, following the ResumableSampler protocol: one seeded permutation per epoch shared by all ranks, rank r takes perm[r::W]."""

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        assert num_items % world_size == 0
        self.num_items, self.seed, self.shuffle, self.rank, self.world_size = num_items, seed, shuffle, rank, world_size
        self.epoch, self.position = 0, 0

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_items, generator=g)[self.rank :: self.world_size].tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def __iter__(self):
        order = self._order()
        while self.position < len(order):
            index = order[self.position]
            self.position += 1
            yield index

    def __len__(self) -> int:
        return self.num_items // self.world_size


def make_sampler(num_items: int, seed: int = 0, rank: int = 0, world_size: int = 1):
    """data/sampler.py's ResumableSampler (the one the entry scripts use) when present, else the stand-in above."""
    try:
        from data.sampler import ResumableSampler
    except ImportError:
        return ListSampler(num_items, seed=seed, rank=rank, world_size=world_size)
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
