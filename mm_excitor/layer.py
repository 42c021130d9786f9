"""The Excitor block: a bypass on a frozen attention's key projection.

    z  = W_down x                              (C -> r)
    a  = softmax((W_up z) . P^T / sqrt(C))     token-to-prompt affinity over K' prompts
    K' = W_k x + g * W_k (a . P)               g: one zero-initialised gate per KV head

Only the keys change; RoPE, the KV cache and whatever attention kernel the model uses consume K' unchanged, and
values and hidden states are never touched. The affinity is the rank-r product z . (P W_up)^T, and
W_k (a . P) = a . (W_k P) leaves a choice, made per call by counting multiply-adds (`association_costs`): the
prompt side applies the frozen W_k to the K' prompts (once per layer for a shared set, memoised while decoding),
the token side to the M tokens' mixes a . P (cheaper when M < K', e.g. 257 visual prompts and 32 caption tokens).
The arithmetic of both, with hand-written backwards that keep as little as possible alive, is in `bypass.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .bypass import (
    PromptPieces, TokenSide, gated_prompt_bypass, gated_token_bypass, prepare_affinity, prompt_side_output,
    token_side_output,
)
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
        self.key_association = config.key_association
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
        # RMS(W_up W_down x) = gain * RMS(x): a sharp enough affinity at init (see ExcitorConfig.affinity_init_gain)
        nn.init.normal_(self.down.weight, std=math.sqrt(config.affinity_init_gain / hidden))
        nn.init.normal_(self.up.weight, std=math.sqrt(config.affinity_init_gain / config.rank))
        self._visual: tuple[torch.Tensor, torch.Tensor] | None = None
        self._memo_store: InferenceMemo[_InferenceMemo] = InferenceMemo()

    def extra_repr(self) -> str:
        return (
            f"prompts={tuple(self.prompts.shape)}, rank={self.down.out_features}, kv_heads={self.num_kv_heads}, "
            f"gate_tanh={self.gate_tanh}, visual_prompt_mode={self.visual_prompt_mode}, "
            f"key_association={self.key_association}"
        )

    def set_visual_tokens(self, tokens: torch.Tensor | None, has_image: torch.Tensor | None = None) -> None:
        """Per-sample visual prompts for the following forward calls (None: learnable prompts only); set them
        through `mm_excitor.model.visual_prompts`, which always clears them again.

        `tokens` are the projected visual tokens (B x N_v x C); `has_image` (B, bool) masks out samples without
        an image so that they see the learnable prompts alone.
        """
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
        if torch.is_grad_enabled():
            self._memo_store.clear()
            prompts = self._prompt_pieces()
            _check_one_set_per_row(hidden_states, prompts[1])
            keys = self._training_forward(hidden_states, *prompts)
        else:
            memo = self._memo()
            _check_one_set_per_row(hidden_states, memo.prompts.per_sample)
            keys = self._inference_forward(hidden_states, memo)
        return keys.view(*hidden_states.shape[:-1], keys.shape[-1])

    def training_association(self, hidden_states: torch.Tensor) -> str:
        """The order ('prompt' or 'token') a training call on `hidden_states` (B x M x C) uses with the current
        prompts: for benchmarks and logs."""
        shared, per_sample, _, _ = self._prompt_pieces()
        _check_one_set_per_row(hidden_states, per_sample)
        return self._association(hidden_states, shared, per_sample, training=True)

    def affinity(self, hidden_states: torch.Tensor) -> AffinityView:
        """The affinity logits and each token's prompt mix for `hidden_states` (B x M x C) and the current prompts,
        as the block computes them (in fp32, without gradients): what `bench/affinity.py` reads, since the
        bypass's own kernels keep neither."""
        with torch.no_grad():
            shared, per_sample, offset, mask = self._prompt_pieces()
            _check_one_set_per_row(hidden_states, per_sample)
            prompts = PromptPieces(shared, per_sample, offset, torch.float32)
            rows_t, bias = prepare_affinity(prompts.affinity_rows(self.up.weight.float()), mask, self.scale)
            logits = hidden_states.float() @ self.down.weight.float().t() @ rows_t
            if bias is not None:
                logits = logits + bias
            return AffinityView(logits, prompts.mix(logits.softmax(dim=-1)), prompts.num_shared)

    def _training_forward(
        self, hidden: torch.Tensor, shared: torch.Tensor | None, per_sample: torch.Tensor | None,
        offset: torch.Tensor | None, mask: torch.Tensor | None,
    ) -> torch.Tensor:
        dtype = self._compute_dtype()
        if self._association(hidden, shared, per_sample, training=True) == "token":
            return gated_token_bypass(
                hidden, self.base.weight, self.base.bias, self.down.weight, self.up.weight, shared, per_sample, offset,
                self.gate_values(), mask, self._token_side(dtype, hidden),
            )
        recompute = None
        if per_sample is None:
            # The shared prompt keys are cheap to recompute in backward and need not stay alive until then.
            recompute = partial(self._prompt_keys_in, dtype)
        prompt_affinity = PromptPieces(shared, per_sample, offset, self.prompts.dtype).affinity_rows(self.up.weight)
        return gated_prompt_bypass(
            self.base(hidden), hidden.to(dtype), self.down.weight.to(dtype), prompt_affinity.to(dtype),
            self._prompt_keys(shared, per_sample, offset).to(dtype),
            self.gate_values().repeat_interleave(self.head_dim), mask, self.scale, recompute,
        )

    def _inference_forward(self, hidden: torch.Tensor, memo: _InferenceMemo) -> torch.Tensor:
        prompts = memo.prompts
        if self._association(hidden, prompts.shared, prompts.per_sample, training=False, memo=memo) == "token":
            return token_side_output(
                hidden, self.base.weight, self.base.bias, memo.down, memo.rows_t, memo.bias, prompts, memo.gate,
                self._token_side(memo.dtype, hidden),
            )
        if memo.gated_keys is None:
            keys = self._prompt_keys(*memo.pieces[:3]).to(memo.dtype)
            memo.gated_keys = (keys * self.gate_values().repeat_interleave(self.head_dim)).to(memo.dtype)
        return prompt_side_output(
            F.linear(hidden, self.base.weight, self.base.bias), hidden.to(memo.dtype), memo.down, memo.rows_t,
            memo.bias, memo.gated_keys,
        )

    def _association(
        self, hidden: torch.Tensor, shared: torch.Tensor | None, per_sample: torch.Tensor | None, *, training: bool,
        memo: _InferenceMemo | None = None,
    ) -> str:
        """'prompt' or 'token': the configured order, or under 'auto' the one with fewer multiply-adds.

        Without gradients the prompt keys are memoised for the following calls on the same prompt set (decoding
        steps); the token-side work already spent on a set counts towards their price, so a short generation stays
        token-side and a long one builds the keys once they are the cheaper investment.
        """
        if self.key_association != "auto":
            return self.key_association
        if memo is not None and memo.gated_keys is not None:
            return "prompt"
        shared_rows = 0 if shared is None else shared.shape[0]
        costs = association_costs(
            tokens=hidden.numel() // hidden.shape[-1],
            prompts=shared_rows + (0 if per_sample is None else per_sample.shape[1]),
            prompt_rows=shared_rows + (0 if per_sample is None else per_sample.shape[0] * per_sample.shape[1]),
            hidden=self.base.in_features,
            key_width=self.base.out_features,
            heads=self.num_kv_heads,
            training=training,
            shared_prompts=per_sample is None,
            head_loop=_head_loop(hidden),
            operator_cost=OPERATOR_COST.get(hidden.device.type, ACCELERATOR_OPERATOR_COST),
        )
        if memo is None:
            return "prompt" if costs.prompt_side <= costs.token_side else "token"
        if memo.token_work + costs.token_side >= costs.prompt_side:
            return "prompt"
        memo.token_work += costs.token_side
        return "token"

    def _token_side(self, dtype: torch.dtype, hidden: torch.Tensor) -> TokenSide:
        projection_dtype = dtype if torch.is_autocast_enabled(hidden.device.type) else self.base.weight.dtype
        return TokenSide(self.scale, dtype, projection_dtype, _head_loop(hidden))

    def _prompt_keys_in(self, dtype: torch.dtype) -> torch.Tensor:
        return self._keys_of(self.prompts).to(dtype)

    def _prompt_keys(
        self, shared: torch.Tensor | None, per_sample: torch.Tensor | None, offset: torch.Tensor | None
    ) -> torch.Tensor:
        """W_k P(b) from the pieces (see `PromptPieces`): the shared prompts pass W_k once for the whole batch."""
        if per_sample is None:
            return self._keys_of(shared)
        keys = self._keys_of(per_sample)
        if offset is not None:
            keys = keys + self._keys_of(offset)
        if shared is None:
            return keys
        return torch.cat([self._keys_of(shared).expand(keys.shape[0], -1, -1), keys], dim=1)

    def _keys_of(self, prompts: torch.Tensor) -> torch.Tensor:
        """W_k P: the frozen key projection of a prompt set, in the frozen model's dtype."""
        return F.linear(prompts.to(self.base.weight.dtype), self.base.weight)

    def _compute_dtype(self) -> torch.dtype:
        """The adapters' dtype (fp32), or the autocast dtype inside an autocast region, as nn.Linear would use."""
        device_type = self.prompts.device.type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.prompts.dtype

    def _prompt_pieces(
        self,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """This layer's prompts P(b) in pieces (see `PromptPieces`): shared (K x C), per-sample (B x N x C), the
        offset added to the per-sample ones, and a B x K' validity mask."""
        if self._visual is None:
            return self.prompts, None, None, None
        tokens, has_image = self._visual
        batch = tokens.shape[0]
        if self.visual_prompt_mode == "concat":
            mask = torch.cat(
                [
                    torch.ones(batch, self.prompts.shape[0], dtype=torch.bool, device=tokens.device),
                    has_image[:, None].expand(batch, tokens.shape[1]),
                ],
                dim=1,
            )
            return self.prompts, tokens, self.visual_offset, mask
        visual = tokens.to(self.prompts.dtype) + self.visual_offset
        resampled = F.adaptive_avg_pool1d(visual.transpose(1, 2), self.prompts.shape[0]).transpose(1, 2)
        return None, self.prompts + resampled * has_image[:, None, None].to(resampled.dtype), None, None

    def _memo(self) -> _InferenceMemo:
        """The current prompt set's memo for no-grad calls (rebuilt when the prompts or any parameter change).

        Decoding calls the block once per new token with the same prompts: the memo keeps what depends only on
        them, so that a step costs what its tokens cost.
        """
        tensors = [t for t in self._visual or () if t is not None]
        for module in (self, self.down, self.up, self.base):  # _parameters: no per-name attribute lookups per call
            tensors += [t for t in module._parameters.values() if t is not None]
        return self._memo_store.get(tensors, self._build_memo)

    def _build_memo(self) -> _InferenceMemo:
        dtype = self._compute_dtype()
        pieces = self._prompt_pieces()
        prompts = PromptPieces(*pieces[:3], dtype)
        rows_t, bias = prepare_affinity(prompts.affinity_rows(self.up.weight.to(dtype)), pieces[3], self.scale)
        return _InferenceMemo(dtype=dtype, pieces=pieces, prompts=prompts, rows_t=rows_t.contiguous(), bias=bias,
                              down=self.down.weight.to(dtype), gate=self.gate_values())


class AffinityView(NamedTuple):
    """What `ExcitorKeyProjection.affinity` returns."""

    logits: torch.Tensor
    """B x M x K' token-to-prompt logits (the scale included), -inf at masked prompts; softmax gives `a`."""
    mixes: torch.Tensor
    """B x M x C: every token's mix a . P(b), whose key W_k (a . P) the gate scales."""
    num_shared: int
    """The first `num_shared` of the K' prompts are the learnable ones; the rest are the sample's visual prompts."""


@dataclass
class _InferenceMemo:
    """What no-grad calls on one prompt set share (mm_excitor.memo keeps it while the prompts and parameters are
    the same tensors, unmodified, under the same autocast dtype)."""

    dtype: torch.dtype
    pieces: tuple
    """`_prompt_pieces()` as they were: the prompt keys are computed from them as in training."""
    prompts: PromptPieces
    """The pieces in the compute dtype, for the token side."""
    rows_t: torch.Tensor
    bias: torch.Tensor | None
    """The affinity's prompt side (`bypass.prepare_affinity`)."""
    down: torch.Tensor
    gate: torch.Tensor
    gated_keys: torch.Tensor | None = None
    """W_k P(b) * g, built the first time the prompt side is chosen."""
    token_work: int = 0
    """Multiply-adds spent token-side on this prompt set so far."""


# Fewer token rows than this go through W_k in plain products: per-head products would be too small to pay for
# their own overhead (decoding steps).
HEAD_LOOP_MIN_ROWS = 64


def _head_loop(hidden: torch.Tensor) -> bool:
    """Go through W_k head by head (`bypass.TokenSide.head_loop`) on CPUs, where a product with W_k costs more than
    a few passes over the rows per head, and where there are enough rows; GPUs multiply far faster than they move
    memory, so plain products are cheaper there."""
    return hidden.device.type == "cpu" and hidden.numel() // hidden.shape[-1] >= HEAD_LOOP_MIN_ROWS


def _check_one_set_per_row(hidden: torch.Tensor, per_sample: torch.Tensor | None) -> None:
    """One visual prompt set per row, never broadcast: a caller that expands its batch (beam search) expands the
    visual tokens the same way (methods.prompted.PromptedModel.generate_ids)."""
    if per_sample is not None and per_sample.shape[0] != hidden.shape[0]:
        raise ValueError(f"a batch of {hidden.shape[0]} rows was given {per_sample.shape[0]} visual prompt sets: pass "
                         "one image (or visual tokens) per row")


@dataclass(frozen=True)
class AssociationCosts:
    prompt_side: int
    token_side: int
    prompt_keys: int
    """The part of `prompt_side` that computes W_k P: memoised without gradients, free for the following calls."""


# What a device multiplies (multiply-adds) in the time Python and the dispatcher take to launch one operator,
# roughly: ~20 us at ~50 G multiply-adds/s on a CPU core, ~10 us at ~100 T/s on a GPU. It matters only for the
# small calls of decoding, where the token side's extra operators cost more than its multiply-adds.
OPERATOR_COST = {"cpu": 1_000_000}
ACCELERATOR_OPERATOR_COST = 1_000_000_000
# Operators launched by one no-grad call besides the frozen projection: the memoised prompt side, the token side.
PROMPT_SIDE_OPERATORS = 6
TOKEN_SIDE_OPERATORS = 12
# An element-wise pass over a float on a CPU core (memory-bound, ~3 G/s) costs about as much as 20 multiply-adds
# in a product (~60 G/s): the price of the head loop's passes.
PASS_COST = 20


def association_costs(
    *, tokens: int, prompts: int, prompt_rows: int, hidden: int, key_width: int, heads: int, training: bool,
    shared_prompts: bool, head_loop: bool, operator_cost: int = 0,
) -> AssociationCosts:
    """Multiply-adds (or their equivalent) of the work in which the two orders differ, for one call of one block.

    `tokens` = B x M rows, `prompts` = K' per sample, `prompt_rows` = the prompt rows W_k projects (K when the set
    is shared by the batch, else K + B x N: the shared prompts once, the per-sample ones per sample), `hidden` = C,
    `key_width` = C_kv, `heads` = KV heads.
    - prompt side: W_k P (with gradients also the prompts' gradient through W_k, and for a shared set W_k P again in
      backward, recomputed rather than kept: 2 or 3 products of the prompt rows); a . PK (and its two gradients);
    - token side, with the head loop (`head_loop`, CPUs): no product with W_k beyond the frozen projection's own,
      but one pass over the tokens per head forward and three backward (`PASS_COST` each); without it, W_k on the
      mixes (and with gradients two more products: the mixes' gradient and the gate's); a . P (forward,
      recomputed and its two gradients).
    Without gradients W_k P is memoised for the following calls (`prompt_keys` is its part of `prompt_side`), and
    each order also costs `operator_cost` per operator it launches.
    """
    projection = hidden * key_width
    passes = (4 if training else 1) * PASS_COST * heads * tokens * hidden
    if training:
        prompt_keys = prompt_rows * projection * (3 if shared_prompts else 2)
        prompt_side = prompt_keys + 3 * tokens * prompts * key_width
        token_side = 4 * tokens * prompts * hidden + (passes if head_loop else 3 * tokens * projection)
    else:
        prompt_keys = prompt_rows * projection
        prompt_side = prompt_keys + tokens * prompts * key_width + PROMPT_SIDE_OPERATORS * operator_cost
        token_side = tokens * prompts * hidden + (passes if head_loop else tokens * projection)
        token_side += TOKEN_SIDE_OPERATORS * operator_cost
    return AssociationCosts(prompt_side, token_side, prompt_keys)
