"""Decoding settings: one frozen record from the YAML `decoding:` section to `generate`, reported with every score.

Greedy and beam output can change with the batch size through padding, so the batch size is part of the protocol
(LAVIS and LLaVA fix it for the same reason). Sampling (`do_sample`) is for data synthesis, never for scores.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .recipe import check_positive_ints


NEUTRAL_LOGIT_PROCESSING = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
"""Settings a model's generation_config.json may hold that this record does not offer: always off."""
NEUTRAL_SAMPLING = {"min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
"""The same for the sampling-only warpers: off when sampling, unset when greedy (where transformers ignores them and
warns that a set one is not valid)."""


@dataclass(frozen=True)
class Decoding:
    batch_size: int = 16
    num_beams: int = 1
    max_new_tokens: int = 30
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        check_positive_ints(self, "decoding", "batch_size", "num_beams", "max_new_tokens")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"decoding min_new_tokens must be in [0, max_new_tokens]: {self}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"decoding temperature must be > 0 and top_p in (0, 1]: {self}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("decoding: sampling with beams is not supported; set num_beams=1 or do_sample=false")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def generate_kwargs(self, pad_token_id: int, eos_token_id: int | list[int] | None) -> dict[str, Any]:
        """Keyword arguments of Hugging Face `generate`: everything it uses, set, because transformers fills every
        field a call leaves unset from the model's generation_config.json (Qwen2's sets a repetition penalty, for
        one), and a reported score must depend on this record alone."""
        kwargs: dict[str, Any] = dict(
            do_sample=self.do_sample, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
            **NEUTRAL_LOGIT_PROCESSING,
        )
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=0, **NEUTRAL_SAMPLING)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None, **dict.fromkeys(NEUTRAL_SAMPLING))
        return kwargs
