"""The frozen open_clip image encoder whose final-layer tokens become Excitor prompt inputs."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import resize_pos_embed
from torch import nn

from mm_excitor.identity import state_fingerprint
from mm_excitor.torchscript import is_torchscript_archive, read_torchscript_state_dict

logger = logging.getLogger(__name__)


@dataclass
class VisionConfig:
    """Which open_clip encoder, from which local checkpoint, and how many tokens it hands to the Excitor."""

    model_name: str = "ViT-L-14-quickgelu"
    """Any open_clip model name (the paper's era: ViT-L-14 with OpenAI weights, which use QuickGELU)."""
    pretrained: str | None = None
    """A local checkpoint file: open_clip's (.safetensors/.bin/.pt, loaded weights_only) or OpenAI's original
    TorchScript archive (ViT-L-14.pt, read without executing it). None: random init, features carry no meaning."""
    model_config_file: str | None = None
    """An open_clip model-config JSON to register first, for encoders open_clip does not ship (tests, demos)."""
    token_grid: int | None = None
    """Average-pool the patch tokens to a token_grid x token_grid grid (CLS kept) to bound N_v; None keeps all."""
    init_seed: int = 0
    """Seed of a random-init encoder, so that 'random CLIP' is the same encoder in every process and run."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to open_clip.create_model_and_transforms (e.g. force_image_size)."""


class VisionEncoder(nn.Module):
    """Frozen, eval-mode open_clip visual tower returning CLS + patch tokens of its final layer (B x N_v x D)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        if config.model_config_file is not None:
            path = Path(config.model_config_file)
            if not path.is_file():
                raise FileNotFoundError(f"open_clip model config not found: {path}")
            open_clip.add_model_config(path)
        if config.pretrained is not None and not Path(config.pretrained).is_file():
            raise FileNotFoundError(
                f"CLIP checkpoint not found: {config.pretrained} (mm_excitor never downloads weights; "
                f"pass a local open_clip/OpenAI checkpoint file, or none for a random-init encoder)"
            )
        # OpenAI's original checkpoints are TorchScript archives, which open_clip's weights_only load refuses:
        # their weights are read without executing the archive and loaded into the open_clip model here.
        archive = config.pretrained is not None and is_torchscript_archive(config.pretrained)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            clip, _, preprocess = open_clip.create_model_and_transforms(
                config.model_name, pretrained=None if archive else config.pretrained, **config.extra
            )
        if archive:
            load_torchscript_clip(clip, config.pretrained, config.model_name)
        if config.pretrained is None:
            logger.warning(
                "CLIP encoder %s is RANDOM-INIT (no pretrained checkpoint given): its visual features carry no "
                "pretrained meaning, and results with it say nothing about a real CLIP.", config.model_name
            )
        if not hasattr(clip.visual, "forward_intermediates") or not hasattr(clip.visual, "class_embedding"):
            raise ValueError(f"{config.model_name}: only open_clip ViT image towers are supported (CLS + patch tokens)")
        self.visual = clip.visual.eval().requires_grad_(False)
        self.preprocess: Callable = preprocess
        self.width: int = self.visual.transformer.width
        grid = self.visual.grid_size
        self.num_tokens: int = 1 + (config.token_grid**2 if config.token_grid else grid[0] * grid[1])
        self._identity: dict[str, Any] | None = None

    def train(self, mode: bool = True) -> "VisionEncoder":
        return super().train(False)  # always frozen: no dropout, no batch-stat updates

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            images.to(self.visual.conv1.weight.device, self.visual.conv1.weight.dtype),
            indices=1,
            normalize_intermediates=True,
            intermediates_only=True,
            output_fmt="NCHW",
            output_extra_tokens=True,
        )
        cls = out["image_intermediates_prefix"][-1]  # B x 1 x D
        patches = out["image_intermediates"][-1]  # B x D x H x W
        if self.config.token_grid:
            patches = F.adaptive_avg_pool2d(patches, self.config.token_grid)
        return torch.cat([cls, patches.flatten(2).transpose(1, 2)], dim=1)

    def identity(self) -> dict[str, Any]:
        """What produced these features: ``config_identity(config)`` (architecture, checkpoint file or init seed,
        token grid) plus what the built encoder shows: a hash of its weights, its preprocessing and token layout.

        A feature cache and an adapter record it, so that features or adapters from another encoder are refused.
        """
        if self._identity is None:
            preprocess = getattr(self.visual, "preprocess_cfg", {}) or {}
            self._identity = {
                **config_identity(self.config),
                "weights_sha256": state_fingerprint(self.visual.state_dict()),
                "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()},
                "image_size": list(self.visual.image_size),
                "num_tokens": self.num_tokens,
                "width": self.width,
            }
        return dict(self._identity)


def config_identity(config: VisionConfig) -> dict[str, Any]:
    """The fields of ``VisionEncoder.identity()`` that the config alone fixes, computed without building the encoder.

    Which weights: the sha256 of the checkpoint file's bytes, or the seed of a random init; which architecture:
    the model name, the sha256 of the model-config JSON given (None: open_clip's own config of that name) and the
    creation kwargs; which token layout: the grid. A feature cache is checked against a config with these, because
    hashing a checkpoint file costs far less time and memory than building the encoder to hash its weights
    (docs/design.md, "Measured numbers behind library defaults").
    """
    if config.pretrained is not None and not Path(config.pretrained).is_file():
        raise FileNotFoundError(f"CLIP checkpoint not found: {config.pretrained} (its sha256 identifies the encoder)")
    model_config = None
    if config.model_config_file is not None:
        path = Path(config.model_config_file)
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {path}")
        try:
            canonical = json.dumps(json.loads(path.read_text()), sort_keys=True)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        model_config = hashlib.sha256(canonical.encode()).hexdigest()
    return {
        "model_name": config.model_name,
        "model_config_sha256": model_config,
        "create_kwargs": json.loads(json.dumps(config.extra, sort_keys=True, default=str)),
        "checkpoint_sha256": _file_sha256(Path(config.pretrained)) if config.pretrained is not None else None,
        "init_seed": config.init_seed if config.pretrained is None else None,
        "token_grid": config.token_grid,
    }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


# Entries of OpenAI's archives that are sizes, not weights (open_clip's load_state_dict drops the same ones).
_OPENAI_SIZES = ("input_resolution", "context_length", "vocab_size")


def load_torchscript_clip(clip: nn.Module, path: str | Path, model_name: str) -> None:
    """Load an OpenAI TorchScript CLIP checkpoint into an open_clip model, strictly, as open_clip loads a state dict.

    Weights that do not fit the model (another architecture) are an error naming the file and the first keys.
    """
    state = read_torchscript_state_dict(path)
    for key in _OPENAI_SIZES:
        state.pop(key, None)
    resize_pos_embed(state, clip)
    expected = clip.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} is {tuple(state[k].shape)}, {model_name} has {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise ValueError(f"{path}: these weights do not fit {model_name} ({len(problems)} problems: "
                         f"{'; '.join(problems[:3])}); pick the matching model_name, e.g. ViT-L-14-quickgelu for "
                         "OpenAI's ViT-L-14.pt")
    clip.load_state_dict(state)
    logger.info("%s: OpenAI TorchScript checkpoint loaded into %s (weights read without executing the archive)",
                path, model_name)
