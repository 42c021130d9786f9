"""Build a run's model from its config, the way open_clip's factory builds CLIP: one call (`create_model`), local
files only.

`ModelConfig` lives here, next to the one function that reads it: it composes the frozen LM's and encoder's
settings with one section per method, and each method's section is defined (and validated) in that method's own
module (`ExcitorConfig` in methods/excitor/config.py, `LoraSettings` in methods/lora.py, ...). A method is built
from its own sections only (`method_model`), so methods/ never needs this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .methods import method_class
from .methods.excitor.config import ExcitorConfig
from .methods.llama_adapter import LlamaAdapterSettings
from .methods.lora import LoraSettings
from .methods.prefix import PrefixSettings
from .methods.text_prefix import TextPrefixSettings
from .vision import VisionConfig, VisionEncoder, config_identity
from .vision_language import VisionLanguageModel

if TYPE_CHECKING:  # the feature cache's module is only needed by runs that read one
    from .feature_cache import FeatureCache

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
    config: ModelConfig, *, feature_cache: FeatureCache | None = None, device: str | torch.device = "cpu"
) -> VisionLanguageModel:
    """The model of `config.method` on the frozen LM of `config`, on `device`.

    With a `feature_cache` no encoder is built: the cache, checked to come from the encoder `config.vision` names,
    provides the visual tokens, and its encoder identity becomes the model's (so adapters record what really made
    the features). Without one the model encodes images itself (`model.vision.preprocess` prepares them)."""
    if feature_cache is not None:
        check_cache_matches_config(feature_cache.identity, config)
    language_model, tokenizer = load_language_model(config.language_model, config.dtype, config.attn_implementation,
                                                    random_init_seed=config.random_init_seed, device=device)
    if feature_cache is None:
        model = method_model(config, language_model, tokenizer, vision=VisionEncoder(config.vision))
    else:
        model = method_model(config, language_model, tokenizer, vision_identity=feature_cache.identity)
    return model.to(device)


def method_model(
    config: ModelConfig, language_model: nn.Module, tokenizer: Any, *, vision: VisionEncoder | None = None,
    vision_identity: dict[str, Any] | None = None,
) -> VisionLanguageModel:
    """`config.method`'s model on a frozen LM already loaded (benchmarks share one copy between methods), fed by the
    encoder `vision` or by a cache of the encoder `vision_identity`. The method receives its own sections of
    `config` (`settings_sections`, in that order), never the whole config."""
    method = method_class(config.method)
    settings = [getattr(config, section) for section in method.settings_sections]
    return method(language_model, tokenizer, *settings, vision, vision_identity=vision_identity)


def check_cache_matches_config(identity: dict[str, Any], config: ModelConfig) -> None:
    """Refuse a cache made by another encoder than the config names, without building that encoder.

    Compares every field of the cache's encoder identity that the config fixes (``vision.config_identity``): the
    architecture, the checkpoint file's sha256 or the random init's seed, and the token grid. The rest (the weights
    hash of the built encoder) is what an adapter trained from the cache records and checks when it is loaded.
    """
    from .feature_cache import FeatureCacheMismatch

    absent = "<absent>"
    differences = [f"{k}: cache={identity.get(k, absent)!r}, config={v!r}"
                   for k, v in config_identity(config.vision).items() if identity.get(k, absent) != v]
    if differences:
        named = f" (model.vision.pretrained={config.vision.pretrained})" if config.vision.pretrained else ""
        raise FeatureCacheMismatch(f"the feature cache was made by another encoder than model.vision names{named}:"
                                   + "".join(f"\n  {line}" for line in differences))
