"""Build the multimodal model from a config, the way open_clip's factory builds CLIP: one call, local files only."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .methods.excitor.config import ExcitorConfig
from .methods import method_class
from .methods.llama_adapter import LlamaAdapterSettings
from .methods.lora import LoraSettings
from .methods.prefix import PrefixSettings
from .methods.text_prefix import TextPrefixSettings
from .vision_language import VisionLanguageModel
from .vision import VisionConfig, VisionEncoder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    """The frozen LM (a local Hugging Face directory), the frozen encoder, and the method that adapts one to the
    other (its own section holds its settings)."""

    language_model: str = ".cache/smollm2-135m-instruct"
    """Local directory with config.json, weights and tokenizer (`python -m mm_excitor.smollm2` makes the default)."""
    random_init_seed: int | None = None
    """None: load the weights in `language_model`. An integer: build the LM from its config.json alone with random
    weights drawn from this seed (directly on the run's device), to time or test a shape without its checkpoint;
    such a run's scores mean nothing. Set explicitly only: a missing weights file is always an error otherwise."""
    dtype: str = "float32"
    """dtype of the frozen LM: float32 | bfloat16 | float16 (trainable tensors are always fp32)."""
    attn_implementation: str = "sdpa"
    method: str = "excitor"
    """How the frozen LM is adapted: excitor | lora | llama_adapter | prefix | text_prefix
    (mm_excitor.methods.METHODS); each reads its own section below (lora reads `lora` and `prefix`; text_prefix is
    language-only)."""
    excitor: ExcitorConfig = field(default_factory=lambda: ExcitorConfig(visual_prompt_mode="concat"))
    lora: LoraSettings = field(default_factory=LoraSettings)
    llama_adapter: LlamaAdapterSettings = field(default_factory=LlamaAdapterSettings)
    prefix: PrefixSettings = field(default_factory=PrefixSettings)
    text_prefix: TextPrefixSettings = field(default_factory=TextPrefixSettings)
    vision: VisionConfig = field(default_factory=VisionConfig)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        method_class(self.method)  # an unknown method is a config error


def load_language_model(path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa", *,
                        random_init_seed: int | None = None, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a local directory; never downloads. With `random_init_seed` the weights are not read:
    the model is built from config.json with random weights from that seed, on `device` (a 7B shape never passes
    through host memory in fp32); otherwise the model is loaded on the CPU."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no language model at {path} (missing {path / 'config.json'}); point model.language_model at a local "
            f"Hugging Face directory, or run `python -m mm_excitor.smollm2 --out {path}` for SmolLM2-135M-Instruct"
        )
    if random_init_seed is None:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], attn_implementation=attn_implementation, local_files_only=True
        )
    else:
        model = random_language_model(path, dtype, attn_implementation, random_init_seed, torch.device(device))
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def random_language_model(path: Path, dtype: str, attn_implementation: str, seed: int, device: torch.device):
    """The causal LM of `path/config.json` with random weights: the same seed gives the same weights on one device
    type, so a run and a later evaluation of it build the same frozen base (adapters check it)."""
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype],
                                                     attn_implementation=attn_implementation)
    model.config._name_or_path = str(path)
    return model


def create_model(
    config: ModelConfig, *, vision_identity: dict[str, Any] | None = None, device: str | torch.device = "cpu"
) -> VisionLanguageModel:
    """The model of `config.method`; with `vision_identity` (from a feature cache) no encoder is built."""
    language_model, tokenizer = load_language_model(config.language_model, config.dtype, config.attn_implementation,
                                                    random_init_seed=config.random_init_seed, device=device)
    vision = None if vision_identity is not None else VisionEncoder(config.vision)
    model = method_class(config.method).build(language_model, tokenizer, config, vision, vision_identity)
    return model.to(device)
