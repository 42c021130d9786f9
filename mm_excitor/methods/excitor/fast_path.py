"""The Excitor block's fast paths: the same keys as `ExcitorKeyProjection.reference`, computed with less work.

Selected by `ExcitorConfig.key_association` (anything but 'reference') for the shared, projected block. Three things
make them faster than the reference, each tested equal to it in values and gradients (tests/test_association.py, tests/test_bypass.py):
- **association of W_k**: W_k (a . P) = a . (W_k P). The prompt side applies the frozen W_k to the K' prompts (once
  per layer for a shared set), the token side to the M tokens' mixes a . P (cheaper when M < K', e.g. 257 visual
  prompts and 32 caption tokens); 'auto' picks per call by the cost model below;
- **hand-written backwards** (`mm_excitor/methods/excitor/bypass.py`) that keep only the block's input alive and never concatenate
  the prompt set, where autograd would keep the affinity, the mixes and B x K' x C prompts per layer;
- **a decoding memo**: without gradients, what depends on the prompt set alone (its affinity rows, and once the
  prompt side is chosen its gated keys) is kept across the calls of one generation.

The cost model (`association_costs` and its constants) is the one place that prices the two orders; the numbers
behind it are in docs/design.md ("Two associations, chosen per call", "Measured numbers behind library defaults") and
experiments/results/adapter_cost*.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .bypass import (
    PromptPieces, TokenSide, gated_prompt_bypass, gated_token_bypass, prepare_affinity, prompt_side_output,
    token_side_output,
)
from ...memo import InferenceMemo
from ...visual_prompts import VisualPrompts

if TYPE_CHECKING:
    from .layer import ExcitorKeyProjection

Pieces = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


class FastKeys:
    """The fast paths of one block (shared visual projection, projected extra key)."""

    def __init__(self, block: ExcitorKeyProjection, association: str) -> None:
        self.block = block
        self.association = association
        self._memo_store: InferenceMemo[_InferenceMemo] = InferenceMemo()

    def __call__(self, hidden: torch.Tensor, visual: VisualPrompts | None) -> torch.Tensor:
        if torch.is_grad_enabled():
            self._memo_store.clear()
            keys = self._training_forward(hidden, *self.pieces(visual))
        else:
            keys = self._inference_forward(hidden, self._memo(visual))
        return keys.view(*hidden.shape[:-1], keys.shape[-1])

    def pieces(self, visual: VisualPrompts | None) -> Pieces:
        """The block's prompts P(b) in pieces (see `bypass.PromptPieces`), never concatenated: shared (K x C),
        per-sample (B x N x C), the offset added to the per-sample ones, and a B x K' validity mask; the same set
        as `ExcitorKeyProjection.prompt_set`."""
        block = self.block
        if visual is None:
            return block.prompts, None, None, None
        tokens, has_image = visual.tokens, visual.has_image
        if block.visual_prompt_mode == "concat":
            batch = tokens.shape[0]
            mask = torch.cat([torch.ones(batch, block.prompts.shape[0], dtype=torch.bool, device=tokens.device),
                              has_image[:, None].expand(batch, tokens.shape[1])], dim=1)
            return block.prompts, tokens, block.visual_offset, mask
        _, per_sample, _ = block.prompt_set(visual)
        return None, per_sample, None, None

    def training_association(self, hidden: torch.Tensor, visual: VisualPrompts | None = None) -> str:
        """The order ('prompt' or 'token') a training call on `hidden` (B x M x C) uses: for benchmarks and logs."""
        shared, per_sample, _, _ = self.pieces(visual)
        return self._choose(hidden, shared, per_sample, training=True)

    def _training_forward(self, hidden: torch.Tensor, shared: torch.Tensor | None, per_sample: torch.Tensor | None,
                          offset: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        block = self.block
        dtype = block.compute_dtype()
        if self._choose(hidden, shared, per_sample, training=True) == "token":
            return gated_token_bypass(
                hidden, block.base.weight, block.base.bias, block.down.weight, block.up.weight, shared, per_sample,
                offset, block.gate_values(), mask, self._token_side(dtype, hidden),
            )
        recompute = None
        if per_sample is None:
            # The shared prompt keys are cheap to recompute in backward and need not stay alive until then.
            recompute = partial(self._shared_keys_in, dtype)
        prompt_affinity = PromptPieces(shared, per_sample, offset, block.prompts.dtype).affinity_rows(block.up.weight)
        return gated_prompt_bypass(
            block.base(hidden), hidden.to(dtype), block.down.weight.to(dtype), prompt_affinity.to(dtype),
            self._prompt_keys(shared, per_sample, offset).to(dtype),
            block.gate_values().repeat_interleave(block.head_dim), mask, block.scale, recompute,
        )

    def _inference_forward(self, hidden: torch.Tensor, memo: _InferenceMemo) -> torch.Tensor:
        block = self.block
        prompts = memo.prompts
        if self._choose(hidden, prompts.shared, prompts.per_sample, training=False, memo=memo) == "token":
            return token_side_output(
                hidden, block.base.weight, block.base.bias, memo.down, memo.rows_t, memo.bias, prompts, memo.gate,
                self._token_side(memo.dtype, hidden),
            )
        if memo.gated_keys is None:
            keys = self._prompt_keys(*memo.pieces[:3]).to(memo.dtype)
            memo.gated_keys = (keys * block.gate_values().repeat_interleave(block.head_dim)).to(memo.dtype)
        return prompt_side_output(
            F.linear(hidden, block.base.weight, block.base.bias), hidden.to(memo.dtype), memo.down, memo.rows_t,
            memo.bias, memo.gated_keys,
        )

    def _choose(self, hidden: torch.Tensor, shared: torch.Tensor | None, per_sample: torch.Tensor | None, *,
                training: bool, memo: _InferenceMemo | None = None) -> str:
        """'prompt' or 'token': the configured order, or under 'auto' the one the cost model prices lower.

        Without gradients the prompt keys are memoised for the following calls on the same prompt set (decoding
        steps); the token-side work already spent on a set counts towards their price, so a short generation stays
        token-side and a long one builds the keys once they are the cheaper investment.
        """
        if self.association != "auto":
            return self.association
        if memo is not None and memo.gated_keys is not None:
            return "prompt"
        block = self.block
        shared_rows = 0 if shared is None else shared.shape[0]
        costs = association_costs(
            tokens=hidden.numel() // hidden.shape[-1],
            prompts=shared_rows + (0 if per_sample is None else per_sample.shape[1]),
            prompt_rows=shared_rows + (0 if per_sample is None else per_sample.shape[0] * per_sample.shape[1]),
            hidden=block.base.in_features,
            key_width=block.base.out_features,
            heads=block.num_kv_heads,
            training=training,
            shared_prompts=per_sample is None,
            head_loop=head_loop(hidden),
            operator_cost=OPERATOR_COST.get(hidden.device.type, ACCELERATOR_OPERATOR_COST),
        )
        if memo is None:
            return "prompt" if costs.prompt_side <= costs.token_side else "token"
        if memo.token_work + costs.token_side >= costs.prompt_side:
            return "prompt"
        memo.token_work += costs.token_side
        return "token"

    def _token_side(self, dtype: torch.dtype, hidden: torch.Tensor) -> TokenSide:
        weight_dtype = self.block.base.weight.dtype
        projection_dtype = dtype if torch.is_autocast_enabled(hidden.device.type) else weight_dtype
        return TokenSide(self.block.scale, dtype, projection_dtype, head_loop(hidden))

    def _shared_keys_in(self, dtype: torch.dtype) -> torch.Tensor:
        return self._keys_of(self.block.prompts).to(dtype)

    def _prompt_keys(self, shared: torch.Tensor | None, per_sample: torch.Tensor | None,
                     offset: torch.Tensor | None) -> torch.Tensor:
        """W_k P(b) from the pieces: the shared prompts pass W_k once for the whole batch."""
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
        weight = self.block.base.weight
        return F.linear(prompts.to(weight.dtype), weight)

    def _memo(self, visual: VisualPrompts | None) -> _InferenceMemo:
        """The current prompt set's memo for no-grad calls (rebuilt when the prompts or any parameter change).

        Decoding calls the block once per new token with the same prompts: the memo keeps what depends only on
        them, so that a step costs what its tokens cost.
        """
        block = self.block
        tensors = [] if visual is None else [visual.tokens, visual.has_image]
        for module in (block, block.down, block.up, block.base):  # _parameters: no per-name lookups per call
            tensors += [t for t in module._parameters.values() if t is not None]
        return self._memo_store.get(tensors, partial(self._build_memo, visual))

    def _build_memo(self, visual: VisualPrompts | None) -> _InferenceMemo:
        block = self.block
        dtype = block.compute_dtype()
        pieces = self.pieces(visual)
        prompts = PromptPieces(*pieces[:3], dtype)
        rows_t, bias = prepare_affinity(prompts.affinity_rows(block.up.weight.to(dtype)), pieces[3], block.scale)
        return _InferenceMemo(dtype=dtype, pieces=pieces, prompts=prompts, rows_t=rows_t.contiguous(), bias=bias,
                              down=block.down.weight.to(dtype), gate=block.gate_values())


@dataclass
class _InferenceMemo:
    """What no-grad calls on one prompt set share (mm_excitor.memo keeps it while the prompts and parameters are
    the same tensors, unmodified, under the same autocast dtype)."""

    dtype: torch.dtype
    pieces: Pieces
    """`FastKeys.pieces` as they were: the prompt keys are computed from them as in training."""
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


# ------------------------------------------------------------------------------------------------ the cost model

HEAD_LOOP_MIN_ROWS = 64
"""Fewer token rows than this go through W_k in plain products: per-head products would be too small to pay for
their own overhead (decoding steps)."""


def head_loop(hidden: torch.Tensor) -> bool:
    """Go through W_k head by head (`bypass.TokenSide.head_loop`) on CPUs, where a product with W_k costs more than
    a few passes over the rows per head, and where there are enough rows; GPUs multiply far faster than they move
    memory, so plain products are cheaper there."""
    return hidden.device.type == "cpu" and hidden.numel() // hidden.shape[-1] >= HEAD_LOOP_MIN_ROWS


@dataclass(frozen=True)
class AssociationCosts:
    prompt_side: int
    token_side: int
    prompt_keys: int
    """The part of `prompt_side` that computes W_k P: memoised without gradients, free for the following calls."""


OPERATOR_COST = {"cpu": 1_000_000}
"""What a device multiplies (multiply-adds) in the time Python and the dispatcher take to launch one operator
(docs/design.md, "Measured numbers behind library defaults"). It matters only for the small calls of decoding,
where the token side's extra operators cost more than its multiply-adds."""
ACCELERATOR_OPERATOR_COST = 1_000_000_000
PROMPT_SIDE_OPERATORS = 6
TOKEN_SIDE_OPERATORS = 12
"""Operators launched by one no-grad call besides the frozen projection: the memoised prompt side, the token side."""
PASS_COST = 20
"""What an element-wise pass over a float on a CPU core (memory-bound) costs, in multiply-adds of a product: the
price of the head loop's passes."""


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
