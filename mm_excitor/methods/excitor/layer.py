"""The Excitor block: a bypass on a frozen attention's key projection (docs/method.md §1).

Per adapted layer, with x the layer's normalised attention input (what the frozen k_proj receives):

    z  = W_down x                               C -> r, trainable
    q  = W_up z                                 the Excitor query, r -> d, trainable
    a  = softmax(q . Keys(b)^T / sqrt(d))       token-to-prompt affinity over the K' prompts of sample b
    e  = a . Values(b)                          the extra attention key, one per token
    K' = W_k x + g * W_k e                      extra_key = 'projected' (d = C)
    K' = W_k x + g * e                          extra_key = 'direct', the authors' diagram (d = C_kv)

g is one zero-initialised gate per KV head, so the block is the frozen k_proj at init. Language-only,
Keys = Values = P_l (K learnable prompts). With images (visual_prompt_mode 'concat'),
Keys(b) = [P_l ; Vk_b + e_l] and Values(b) = [P_l ; Vv_b + e_l]: Vk, Vv the projected visual tokens (one projection
for both, or Wk_Excitor and Wv_Excitor: visual_projection), e_l the layer's offset; mode 'add' adds them, resampled
to K tokens, to P_l. `ExcitorKeyProjection.reference` is these lines; everything after them is the frozen model's
own code path: RoPE rotates K' (the extra key included, with its token's position), the KV cache stores K', any
attention kernel consumes it, and the values are untouched.

The same keys computed faster (the association of W_k, a decoding memo, hand-written backwards) are in
`mm_excitor/methods/excitor/fast_path.py`, selected by `ExcitorConfig.key_association`.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ExcitorConfig
from .fast_path import FastKeys
from ...visual_prompts import KEYWORD, VisualPrompts


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
        self.extra_key = config.extra_key
        self.separate_kv = config.visual_projection == "separate_kv"
        hidden = base.in_features
        self.prompt_width = hidden if config.extra_key == "projected" else base.out_features
        self.scale = 1.0 / math.sqrt(self.prompt_width)
        # Trainable tensors live in fp32 whatever the frozen model's dtype.
        factory = {"device": base.weight.device, "dtype": torch.float32}
        self.prompts = nn.Parameter(torch.empty(config.num_prompts, self.prompt_width, **factory))
        self.down = nn.Linear(hidden, config.rank, bias=False, **factory)
        self.up = nn.Linear(config.rank, self.prompt_width, bias=False, **factory)
        self.gate = nn.Parameter(torch.zeros(num_kv_heads, **factory))
        self.visual_offset = (
            nn.Parameter(torch.zeros(self.prompt_width, **factory)) if config.visual_prompt_mode is not None else None
        )
        nn.init.normal_(self.prompts, std=config.prompt_init_std)
        # RMS(W_up W_down x) = gain * RMS(x): a sharp enough affinity at init (see ExcitorConfig.affinity_init_gain)
        nn.init.normal_(self.down.weight, std=math.sqrt(config.affinity_init_gain / hidden))
        nn.init.normal_(self.up.weight, std=math.sqrt(config.affinity_init_gain / config.rank))
        self.call_prompts: VisualPrompts | None = None
        """The visual prompts of the attention call in progress (`attach`), None outside it."""
        self.fast = FastKeys(self, config.key_association) if config.uses_fast_path else None

    def extra_repr(self) -> str:
        return (
            f"prompts={tuple(self.prompts.shape)}, rank={self.down.out_features}, kv_heads={self.num_kv_heads}, "
            f"gate_tanh={self.gate_tanh}, visual_prompt_mode={self.visual_prompt_mode}, extra_key={self.extra_key}, "
            f"fast_path={None if self.fast is None else self.fast.association}"
        )

    def forward(self, hidden_states: torch.Tensor, visual: VisualPrompts | None = None) -> torch.Tensor:
        """K' for `hidden_states` (B x M x C) with `visual` prompts, by default those of the attention call."""
        visual = self.call_prompts if visual is None else visual
        if visual is not None:
            self.check_visual(visual, hidden_states.shape[0])
        if self.fast is not None:
            return self.fast(hidden_states, visual)
        return self.reference(hidden_states, *self.prompt_set(visual))

    def reference(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """The block's equations, line by line, as autograd differentiates them (`prompt_set` gives the prompts)."""
        a = self.affinity_logits(x, keys, mask).softmax(dim=-1)
        extra = a @ values.to(a.dtype)                                     # e = a . Values(b)
        if self.extra_key == "projected":
            extra = F.linear(extra.to(self.base.weight.dtype), self.base.weight)  # W_k e
        key = self.base(x)                                                 # W_k x, the frozen k_proj exactly
        return key + (extra.unflatten(-1, (self.num_kv_heads, -1)) * self.gate_values()[:, None]).flatten(-2).to(
            key.dtype)

    def affinity_logits(self, x: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q . Keys(b)^T / sqrt(d), -inf at the prompts a sample may not weigh; in at least fp32."""
        dtype = self.compute_dtype()
        z = F.linear(x.to(dtype), self.down.weight.to(dtype))             # z = W_down x
        query = F.linear(z, self.up.weight.to(dtype))                      # q = W_up z
        logits = (query @ keys.to(dtype).transpose(-1, -2)).float() * self.scale
        return logits if mask is None else logits.masked_fill(~mask[:, None, :], float("-inf"))

    def prompt_set(self, visual: VisualPrompts | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(Keys(b), Values(b), mask): the prompts, K x d shared by the batch or B x K' x d, and a B x K' validity
        mask (None: every prompt counts)."""
        if visual is None:
            return self.prompts, self.prompts, None
        batch, count = visual.tokens.shape[:2]
        flags = visual.has_image[:, None, None].to(self.prompts.dtype)

        def joined(tokens: torch.Tensor) -> torch.Tensor:
            """P_l joined with these visual prompts: concatenated, or resampled to K and added (none without image)."""
            visual_prompts = tokens.to(self.prompts.dtype) + self.visual_offset
            if self.visual_prompt_mode == "concat":
                return torch.cat([self.prompts.expand(batch, -1, -1), visual_prompts], dim=1)
            return self.prompts + resample(visual_prompts, self.prompts.shape[0]) * flags

        keys = joined(visual.tokens)
        values = keys if visual.value_tokens is None else joined(visual.value_tokens)
        if self.visual_prompt_mode != "concat":
            return keys, values, None
        mask = torch.cat([torch.ones(batch, self.prompts.shape[0], dtype=torch.bool, device=keys.device),
                          visual.has_image[:, None].expand(batch, count)], dim=1)
        return keys, values, mask

    def check_visual(self, visual: VisualPrompts, rows: int) -> None:
        if self.visual_prompt_mode is None:
            raise ValueError("this Excitor was built language-only (visual_prompt_mode=None): it takes no visual tokens")
        if visual.tokens.shape[-1] != self.prompt_width:
            raise ValueError(f"visual tokens must be B x N x {self.prompt_width} (the prompts' width), got "
                             f"{tuple(visual.tokens.shape)}")
        if (visual.value_tokens is not None) != self.separate_kv:
            raise ValueError("separate value tokens are for visual_projection='separate_kv' blocks, and they need them"
                             f" (this block: visual_projection={'separate_kv' if self.separate_kv else 'shared'})")
        visual.check_rows(rows)

    def gate_values(self) -> torch.Tensor:
        return self.gate.tanh() if self.gate_tanh else self.gate

    def compute_dtype(self) -> torch.dtype:
        """The adapters' dtype (fp32), or the autocast dtype inside an autocast region, as nn.Linear would use."""
        device_type = self.prompts.device.type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.prompts.dtype

    def attach(self, attention: nn.Module) -> None:
        """Hand every call of `attention` its `visual_prompts` keyword argument (what the language model's forward
        was given, see mm_excitor/visual_prompts.py) for the duration of that call."""
        attention.register_forward_pre_hook(_bind_call_prompts, with_kwargs=True)
        attention.register_forward_hook(_unbind_call_prompts, always_call=True)


def _bind_call_prompts(attention: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    attention.k_proj.call_prompts = kwargs.get(KEYWORD)


def _unbind_call_prompts(attention: nn.Module, args: tuple, output: Any) -> None:
    attention.k_proj.call_prompts = None


def resample(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """B x N x d tokens average-pooled to B x count x d ('add' mode)."""
    return F.adaptive_avg_pool1d(tokens.transpose(1, 2), count).transpose(1, 2)


class AffinityView(NamedTuple):
    """What `affinity_view` returns."""

    logits: torch.Tensor
    """B x M x K' token-to-prompt logits (the scale included), -inf at masked prompts; softmax gives `a`."""
    mixes: torch.Tensor
    """B x M x d: every token's extra key e = a . Values(b) (before W_k when projected), which the gate scales."""
    num_shared: int
    """The first `num_shared` of the K' prompts are the learnable ones; the rest are the sample's visual prompts."""


def affinity_view(block: ExcitorKeyProjection, hidden: torch.Tensor, visual: VisualPrompts | None = None) -> AffinityView:
    """The affinity and the extra keys of `block` for `hidden` (B x M x C), in fp32 and without gradients, through the
    reference's own lines: what `experiments/affinity.py` reads."""
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        keys, values, mask = block.prompt_set(visual)
        logits = block.affinity_logits(hidden, keys, mask)  # in the blocks' fp32: autocast is off
        logits = logits.expand(hidden.shape[0], *logits.shape[1:])
        num_shared = block.prompts.shape[0] if visual is None or block.visual_prompt_mode == "concat" else 0
        return AffinityView(logits, logits.softmax(dim=-1) @ values.float(), num_shared)
