"""Seeded, batched sampling from a Hugging Face causal LM: the one generation call of the DELIA data stage."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..decoding import Decoding


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from its parts (e.g. the run's seed and a batch number), the same in every process."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sampling_decoding(batch_size: int, max_new_tokens: int, temperature: float, top_p: float) -> Decoding:
    """The project's one decoding record, set for sampling (it validates the values)."""
    return Decoding(batch_size=batch_size, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                    top_p=top_p)


def sampling_kwargs(decoding: Decoding, stop_ids: Sequence[int], pad_id: int) -> dict[str, Any]:
    """`generate` keyword arguments: the decoding's (top-k off) plus the neutral knobs."""
    if not decoding.do_sample:
        raise ValueError(f"DELIA samples its data: decoding.do_sample must be true, got {decoding}")
    return decoding.generate_kwargs(pad_id, list(stop_ids))


def sample_ids(model: Any, prompts: Sequence[Sequence[int]], generate_kwargs: dict[str, Any], seed: int,
               stop_text: tuple[Any, str] | None = None) -> list[list[int]]:
    """The new token ids for each prompt, sampled in one left-padded batch under `seed` (the caller's global RNG
    state is left as it was). Pads and everything after an end-of-turn id are the caller's to cut.
    `stop_text=(tokenizer, text)` also ends a row once its decoded sample contains `text`."""
    if model.training:
        raise ValueError("the model is in training mode (dropout would change the samples): call model.eval() first")
    device = next(model.parameters()).device
    pad = generate_kwargs["pad_token_id"]
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        criteria = StoppingCriteriaList([_StopAtText(*stop_text, width)] if stop_text is not None else [])
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, stopping_criteria=criteria,
                                **generate_kwargs)
    return output[:, width:].tolist()


class _StopAtText(StoppingCriteria):
    """Ends each row whose decoded sample contains `text`. Unlike transformers' `stop_strings`, which needs to map
    every vocabulary entry to its string, this works with any tokenizer that can decode."""

    def __init__(self, tokenizer: Any, text: str, prompt_width: int) -> None:
        self.tokenizer, self.text, self.prompt_width = tokenizer, text, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        samples = input_ids[:, self.prompt_width:].tolist()
        return torch.tensor([self.text in self.tokenizer.decode(ids, skip_special_tokens=True) for ids in samples],
                            dtype=torch.bool, device=input_ids.device)
