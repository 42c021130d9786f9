"""The Excitor block: a bypass on a frozen attention's key projection.

    z  = W_down x                              (C -> r)
    a  = softmax((W_up z) . P^T / sqrt(C))     token-to-prompt affinity over K' prompts
    K' = W_k x + g * W_k (a . P)               g: one zero-initialised gate per KV head

Only the keys change; RoPE, the KV cache and whatever attention kernel the model uses consume K' unchanged, and
values and hidden states are never touched. Two algebraic shortcuts keep the block cheap: the affinity is the
rank-r product z . (P W_up)^T, and W_k (a . P) = a . (W_k P), so the frozen W_k is applied to the K' prompts
once per forward, never to M reconstructed tokens. The token-side arithmetic, with its hand-written backward that
keeps as little as possible alive, lives in `bypass.py`.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .bypass import gated_prompt_bypass
from .config import ExcitorConfig
from .memo import InferenceMemo


class ExcitorKeyProjection(nn.Module):
    """Drop-in replacement for a frozen `k_proj` that returns reconstructed keys."""

    def __init__(self, base: nn.Linear, num_kv_heads: int, config: ExcitorConfig) -> None:
        super().__init__()
        if base.out_features % num_kv_heads:
            raise ValueError(f"k_proj width {base.out_features} is not divisible by {num_kv_heads} KV heads")
        self.base = base
        self.num_kv_heads = num_kv_heads
        self.head_dim = base.out_features // num_kv_heads
        self.gate_tanh = config.gate_tanh
        self.visual_prompt_mode = config.visual_prompt_mode
        hidden = base.in_features
        self.scale = 1.0 / math.sqrt(hidden)
        # Trainable tensors live in fp32 whatever the frozen model's dtype.
        factory = {"device": base.weight.device, "dtype": torch.float32}
        self.prompts = nn.Parameter(torch.empty(config.num_prompts, hidden, **factory))
        self.down = nn.Linear(hidden, config.rank, bias=False, **factory)
        self.up = nn.Linear(config.rank, hidden, bias=False, **factory)
        self.gate = nn.Parameter(torch.zeros(num_kv_heads, **factory))
        self.visual_offset = (
            nn.Parameter(torch.zeros(hidden, **factory)) if config.visual_prompt_mode is not None else None
        )
        nn.init.normal_(self.prompts, std=config.prompt_init_std)
        self._visual: tuple[torch.Tensor, torch.Tensor] | None = None
        self._memo: InferenceMemo[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = InferenceMemo()

    def extra_repr(self) -> str:
        return (
            f"prompts={tuple(self.prompts.shape)}, rank={self.down.out_features}, kv_heads={self.num_kv_heads}, "
            f"gate_tanh={self.gate_tanh}, visual_prompt_mode={self.visual_prompt_mode}"
        )

    def set_visual_tokens(self, tokens: torch.Tensor | None, has_image: torch.Tensor | None = None) -> None:
        """Per-sample visual prompts for the following forward calls (None: learnable prompts only); set them
        through `mm_excitor.model.visual_prompts`, which always clears them again."""
        if tokens is None:
            self._visual = None
            return
        if self.visual_prompt_mode is None:
            raise ValueError("this Excitor was built language-only (visual_prompt_mode=None): it takes no visual tokens")
        if tokens.dim() != 3 or tokens.shape[-1] != self.prompts.shape[-1]:
            raise ValueError(
                f"visual tokens must be B x N x {self.prompts.shape[-1]} (the LM width), got {tuple(tokens.shape)}"
            )
        if has_image is None:
            has_image = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        if tuple(has_image.shape) != (tokens.shape[0],):
            raise ValueError(f"has_image has shape {tuple(has_image.shape)}, expected ({tokens.shape[0]},): one flag "
                             "per set of visual tokens")
        self._visual = (tokens, has_image.to(device=tokens.device, dtype=torch.bool))

    def gate_values(self) -> torch.Tensor:
        return self.gate.tanh() if self.gate_tanh else self.gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        key = self.base(hidden_states)
        prompt_keys, prompt_affinity, prompt_mask = self._prompt_terms()
        if prompt_keys.dim() == 3 and prompt_keys.shape[0] != hidden_states.shape[0]:
            raise ValueError(f"a batch of {hidden_states.shape[0]} rows was given {prompt_keys.shape[0]} visual prompt "
                             "sets: pass one image (or visual tokens) per row")
        dtype = self._compute_dtype()
        gate = self.gate_values().repeat_interleave(self.head_dim)
        recompute = None
        if prompt_keys.dim() == 2 and torch.is_grad_enabled():
            # The shared prompt keys are cheap to recompute in backward and need not stay alive until then.
            recompute = partial(self._prompt_keys_in, dtype)
        return gated_prompt_bypass(
            key, hidden_states.to(dtype), self.down.weight.to(dtype), prompt_affinity.to(dtype),
            prompt_keys.to(dtype), gate, prompt_mask, self.scale, recompute,
        )

    def _prompt_keys_in(self, dtype: torch.dtype) -> torch.Tensor:
        return self._keys_of(self.prompts).to(dtype)

    def _keys_of(self, prompts: torch.Tensor) -> torch.Tensor:
        """W_k P: the frozen key projection of a prompt set, in the frozen model's dtype."""
        return F.linear(prompts.to(self.base.weight.dtype), self.base.weight)

    def _compute_dtype(self) -> torch.dtype:
        """The adapters' dtype (fp32), or the autocast dtype inside an autocast region, as nn.Linear would use."""
        device_type = self.prompts.device.type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.prompts.dtype

    def _prompt_set(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This layer's prompts P(b): K x C (language-only) or B x K' x C, and a B x K' validity mask."""
        if self._visual is None:
            return self.prompts, None
        tokens, has_image = self._visual
        visual = tokens.to(self.prompts.dtype) + self.visual_offset
        batch = visual.shape[0]
        if self.visual_prompt_mode == "concat":
            prompts = torch.cat([self.prompts.expand(batch, -1, -1), visual], dim=1)
            mask = torch.cat(
                [
                    torch.ones(batch, self.prompts.shape[0], dtype=torch.bool, device=visual.device),
                    has_image[:, None].expand(batch, visual.shape[1]),
                ],
                dim=1,
            )
            return prompts, mask
        resampled = F.adaptive_avg_pool1d(visual.transpose(1, 2), self.prompts.shape[0]).transpose(1, 2)
        return self.prompts + resampled * has_image[:, None, None].to(resampled.dtype), None

    def _prompt_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prompt keys W_k P, rank-r prompt projections P W_up and the mask, memoised while not training.

        Decoding calls the block once per new token with the same prompts; the memo makes that cost one
        matrix-vector product instead of K' x C x C_kv work per token.
        """
        visual = self._visual or (None, None)
        return self._memo.get((*visual, *self.parameters()), self._compute_prompt_terms)

    def _compute_prompt_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        prompts, mask = self._prompt_set()
        prompt_keys = self._keys_of(prompts)
        prompt_affinity = torch.matmul(prompts, self.up.weight)
        return prompt_keys, prompt_affinity, mask
