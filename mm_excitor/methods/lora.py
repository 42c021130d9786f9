"""LoRA (Hu et al., 2021) through peft, with the visual prefix a LoRA user adds to see images (LLaVA's LoRA
recipe: LoRA on the LM plus a trainable projector feeding prefix tokens).

peft's `inject_adapter_in_model` replaces each targeted nn.Linear of the frozen LM in place by a `lora.Linear`
that returns `W x + B A x * alpha / r`, with A Kaiming-uniform and B zero (peft's default `init_lora_weights=True`),
and leaves only the LoRA matrices trainable: at init the LM is the base model exactly (adding B A x = 0). The LM
stays a plain Hugging Face causal LM (no PeftModel wrapper), so `generate` and the prefix code are the same as for
the `prefix` method, which this extends.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from ..language_model import keep_trainable_in_fp32
from ..recipe import check_positive_ints
from ..vision import VisionEncoder
from .prefix import PrefixSettings, VisualPrefixModel


ALL_LINEAR = "all-linear"


@dataclass
class LoraSettings:
    """LoRA on the frozen LM (its visual prefix: `model.prefix`)."""

    r: int = 16
    """The rank of each update B A."""
    alpha: float = 32.0
    """The update is scaled by alpha / r (2r: LLaVA-1.5's LoRA recipe)."""
    dropout: float = 0.05
    """Dropout on the LoRA branch's input (LLaVA-1.5's LoRA recipe)."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Names of the LM's linear layers that get LoRA (the LoRA paper's choice: the query and value projections), or
    [all-linear]: every linear layer of the decoder, the output head excepted (peft's `all-linear`, QLoRA's choice)."""

    def __post_init__(self) -> None:
        check_positive_ints(self, "model.lora", "r")
        if self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.alpha must be > 0 and dropout in [0, 1), got {self.alpha}, {self.dropout}")
        if not self.target_modules:
            raise ValueError("model.lora.target_modules is empty: name at least one linear layer, e.g. q_proj")
        self.target_modules = list(self.target_modules)
        if ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise ValueError(f"model.lora.target_modules: {ALL_LINEAR!r} stands alone (it already names every linear "
                             f"layer), got {self.target_modules}")

    def peft_target_modules(self) -> list[str] | str:
        """What peft's LoraConfig takes: the names, or its `all-linear` string."""
        return ALL_LINEAR if self.target_modules == [ALL_LINEAR] else list(self.target_modules)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LoraPrefixModel(VisualPrefixModel):
    """A frozen causal LM with peft LoRA, reading projected visual tokens as a prefix."""

    method = "lora"
    settings_sections = ("lora", "prefix")

    def __init__(
        self, language_model: nn.Module, tokenizer: Any, lora: LoraSettings, prefix: PrefixSettings,
        vision: VisionEncoder | None = None, *, vision_identity: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(language_model, tokenizer, prefix, vision, vision_identity=vision_identity)
        self.lora_settings = lora
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.peft_target_modules(), bias="none")
        try:
            inject_adapter_in_model(config, self.language_model)
        except ValueError as error:  # peft names the targets it did not find
            raise ValueError(f"model.lora.target_modules {lora.target_modules}: {error}") from None
        keep_trainable_in_fp32(self.language_model)

    def adapter_config(self) -> dict[str, Any]:
        return {"lora": self.lora_settings.to_dict(), "prefix": self.prefix_settings.to_dict()}
