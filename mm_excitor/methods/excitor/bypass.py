"""The Excitor's bypass in both associations, as autograd functions with hand-written backwards.

    z = x . W_down^T,   a = softmax(z . PA^T * s),   PA = P . W_up,   s = 1/sqrt(C)
    prompt side:  out = key + a . (PK * g)                          PK = W_k P, computed by the caller
    token side:   out = x . W_k^T (+ b) + g * ((a . P) . W_k^T)     the frozen projection of the M tokens' mixes

W_k (a . P) = (W_k P) . a, so both give the same values; which is cheaper depends on whether the prompts P (K'
rows, per sample or shared by the batch) or the tokens (M rows) are fewer (`mm_excitor/methods/excitor/fast_path.py` chooses per
call). These are the fast paths of `ExcitorKeyProjection.reference` (mm_excitor/methods/excitor/layer.py), tested equal to it.
g has one value per KV head and multiplies the keys after W_k, per output channel.

Autograd would save z, the affinity, the prompt keys and the mixes for backward. These functions save only x
(which the down projection's gradient needs; LoRA keeps it too), the prompt side's small K' x r prompt projections,
and whatever the caller cannot cheaply recompute; z, the affinity and the mixes a . P (and on the token side the
prompt projections) are recomputed in backward (rank-r products, a softmax over K' prompts, a K'-wide mix). So
nothing grows with the sequence beyond x.

The token side computes the frozen projection x . W_k^T itself. On a CPU it then goes through W_k head by head:
forward (x + g_h a . P) . W_h^T, one product with W_k instead of two; backward the frozen layer's input gradient
G . W_k, the mixes' gradient (G * g) . W_k and the gate's gradient from one product instead of three.

The products run in the dtype of the tensors passed in or the one named (fp32, or the autocast dtype); the softmax,
the gating and the gate's gradient run in at least fp32, the gate's own dtype.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------- shared pieces


def prepare_affinity(
    prompt_affinity: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(s . PA)^T and an additive mask (0, or -inf at masked prompts, B x 1 x K'): what `_affinity` multiplies with.

    Decoding memoises them with the prompt set, so that a step's affinity is two products and a softmax.
    """
    rows_t = (prompt_affinity * scale).transpose(-1, -2)
    if mask is None:
        return rows_t, None
    bias = torch.zeros(mask.shape[0], 1, mask.shape[1], dtype=prompt_affinity.dtype, device=mask.device)
    return rows_t, bias.masked_fill_(~mask[:, None, :], float("-inf"))


def _affinity(
    hidden: torch.Tensor, down_weight: torch.Tensor, rows_t: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, softmax(z . (s . PA)^T + mask)): masked prompts at zero weight, the softmax in at least fp32."""
    z = torch.matmul(hidden, down_weight.t())
    logits = torch.matmul(z, rows_t) if bias is None else torch.baddbmm(bias, z, rows_t)
    return z, logits.to(torch.promote_types(z.dtype, torch.float32)).softmax(dim=-1).to(z.dtype)


def _softmax_backward(affinity: torch.Tensor, grad_affinity: torch.Tensor) -> torch.Tensor:
    """The logits' gradient from the affinity's."""
    return affinity * (grad_affinity - (grad_affinity * affinity).sum(dim=-1, keepdim=True))


def _sum_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a per-sample B x ... gradient over the batch when its input was shared by the batch."""
    return tensor.sum(dim=0) if tensor.dim() > len(shape) else tensor


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1, tensor.shape[-1])


def _gated(projected: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """g * projected, one gate value per head of the last dimension, in the gate's dtype (at least fp32)."""
    return (projected.unflatten(-1, (gate.shape[0], -1)) * gate[:, None]).flatten(-2)


def _add_gated(key: torch.Tensor, projected: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """key + g * projected, `projected` overwritten; with g = 0 the key comes back exactly (x + 0 = x)."""
    if projected.dtype == key.dtype == gate.dtype:
        # In place: the same bits as key + g * projected (the addition commutes exactly).
        projected.unflatten(-1, (gate.shape[0], -1)).mul_(gate[:, None])
        return projected.add_(key)
    return key + _gated(projected, gate).to(key.dtype)


class PromptPieces:
    """A prompt set P(b) = [shared ; per_sample + offset] (K' prompts per sample), never concatenated.

    `shared` (K x C) is one set for the whole batch (the learnable prompts), `per_sample` (B x N x C) one set per
    sample (visual prompts), `offset` (C) a vector added to every per-sample prompt (the layer's visual offset).
    Concatenating would copy B x K' x C per layer, and keeping the copy for backward is what made per-sample
    prompts expensive; the pieces are shared by all layers or are parameters already.
    """

    def __init__(
        self, shared: torch.Tensor | None, per_sample: torch.Tensor | None, offset: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> None:
        if shared is None and per_sample is None:
            raise ValueError("a prompt set needs shared or per-sample prompts")
        self.shared = None if shared is None else shared.to(dtype)
        self.per_sample = None if per_sample is None else per_sample.to(dtype)
        self.offset = None if offset is None or per_sample is None else offset.to(dtype)
        self.num_shared = 0 if shared is None else shared.shape[0]

    def affinity_rows(self, up_weight: torch.Tensor) -> torch.Tensor:
        """PA = P . W_up: K x r (shared only) or B x K' x r."""
        shared = None if self.shared is None else self.shared @ up_weight
        if self.per_sample is None:
            return shared
        sample = self.per_sample @ up_weight
        if self.offset is not None:
            sample = sample + self.offset @ up_weight
        if shared is None:
            return sample
        return torch.cat([shared.expand(sample.shape[0], -1, -1), sample], dim=1)

    def _split(self, affinity: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.per_sample is None:
            return affinity, None
        if self.shared is None:
            return None, affinity
        return affinity[..., : self.num_shared], affinity[..., self.num_shared :]

    def mix(self, affinity: torch.Tensor) -> torch.Tensor:
        """a . P(b): every token's mix of its sample's prompts, B x M x C."""
        shared_part, sample_part = self._split(affinity)
        mixed = None if shared_part is None else torch.matmul(shared_part, self.shared)
        if sample_part is not None:
            if mixed is None:
                mixed = torch.bmm(sample_part, self.per_sample)
            else:
                mixed = mixed.baddbmm_(sample_part, self.per_sample)
            if self.offset is not None:
                mixed.addcmul_(sample_part.sum(dim=-1, keepdim=True), self.offset)
        return mixed

    def grad_affinity(self, grad_mix: torch.Tensor) -> torch.Tensor:
        """d a from d(a . P)."""
        parts = []
        if self.shared is not None:
            parts.append(torch.matmul(grad_mix, self.shared.t()))
        if self.per_sample is not None:
            sample = torch.bmm(grad_mix, self.per_sample.transpose(1, 2))
            if self.offset is not None:
                sample += torch.matmul(grad_mix, self.offset)[..., None]
            parts.append(sample)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def grads(
        self, affinity: torch.Tensor, grad_mix: torch.Tensor | None, grad_rows: torch.Tensor,
        up_weight: torch.Tensor, needs: tuple[bool, bool, bool, bool],
    ) -> tuple[torch.Tensor | None, ...]:
        """Gradients of (shared, per_sample, offset, W_up) from the mix's gradient (`grad_mix`, or None when the
        mix was not used) and the affinity rows' gradient `grad_rows` (d PA, shaped like PA)."""
        need_shared, need_sample, need_offset, need_up = needs
        shared_part, sample_part = self._split(affinity)
        if self.per_sample is None:
            shared_rows, sample_rows = grad_rows, None
        elif self.shared is None:
            shared_rows, sample_rows = None, grad_rows
        else:
            shared_rows = grad_rows[:, : self.num_shared].sum(dim=0)
            sample_rows = grad_rows[:, self.num_shared :]
        grad_shared = grad_sample = grad_offset = grad_up = None
        if shared_rows is not None:
            if need_shared:
                grad_shared = shared_rows @ up_weight.t()
                if grad_mix is not None:
                    grad_shared.addmm_(_flat(shared_part).t(), _flat(grad_mix))
            if need_up:
                grad_up = self.shared.t() @ shared_rows
        if sample_rows is not None:
            if need_sample:
                if grad_mix is None:
                    grad_sample = sample_rows @ up_weight.t()
                else:  # one product [a^T | d PA] . [d mix ; W_up^T]: the B x N x C result is written once
                    grad_sample = torch.bmm(
                        torch.cat([sample_part.transpose(1, 2), sample_rows], dim=2),
                        torch.cat([grad_mix, up_weight.t().expand(grad_mix.shape[0], -1, -1)], dim=1),
                    )
            if need_up:
                sample_up = (_flat(sample_rows).t() @ _flat(self.per_sample)).t()  # the faster orientation on CPUs
                grad_up = sample_up if grad_up is None else grad_up.add_(sample_up)
            if self.offset is not None:
                row_sum = sample_rows.sum(dim=(0, 1))
                if need_offset:
                    grad_offset = up_weight @ row_sum
                    if grad_mix is not None:
                        grad_offset += sample_part.sum(dim=-1).reshape(-1) @ _flat(grad_mix)
                if need_up:
                    grad_up.add_(torch.outer(self.offset, row_sum))
        return grad_shared, grad_sample, grad_offset, grad_up


# ----------------------------------------------------------------------------------------------- prompt side


def prompt_side_output(
    key: torch.Tensor, hidden: torch.Tensor, down_weight: torch.Tensor, rows_t: torch.Tensor,
    bias: torch.Tensor | None, gated_keys: torch.Tensor,
) -> torch.Tensor:
    """key + a . (PK * g), the prompt-side forward (also used as is without autograd, e.g. while decoding);
    `rows_t`/`bias` from `prepare_affinity`."""
    _, affinity = _affinity(hidden, down_weight, rows_t, bias)
    gated_keys = gated_keys.to(affinity.dtype)
    if key.dtype != affinity.dtype:  # a frozen bf16 model with fp32 adapters and no autocast
        return key + torch.matmul(affinity, gated_keys).to(key.dtype)
    if gated_keys.dim() == 3:
        return torch.baddbmm(key, affinity, gated_keys)
    batch, tokens, width = key.shape  # one prompt set for the whole batch: a single 2-D product
    return torch.addmm(key.reshape(batch * tokens, width), affinity.reshape(batch * tokens, -1), gated_keys).view(
        batch, tokens, width
    )


def gated_prompt_bypass(
    key: torch.Tensor,
    hidden: torch.Tensor,
    down_weight: torch.Tensor,
    prompt_affinity: torch.Tensor,
    prompt_keys: torch.Tensor,
    gate: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    recompute_prompt_keys: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Prompt side: key (B x M x C_kv) plus the gated reconstructed key of every token.

    `prompt_affinity`/`prompt_keys` are K' x r / K' x C_kv (shared by the batch) or B x K' x ... (per sample);
    `gate` has C_kv entries; `mask` (B x K', bool) marks the valid prompts of each sample.
    `recompute_prompt_keys`, if given, returns `prompt_keys` again in backward, so that they are not kept
    alive in between: worth it for the shared K x C_kv prompt keys (K C C_kv multiply-adds per layer and step,
    whatever the batch), not for per-sample ones (that work grows with the batch). Like activation checkpointing,
    it assumes that what it reads is not changed between forward and backward (an optimizer step comes after).
    """
    return _GatedPromptBypass.apply(
        key, hidden, down_weight, prompt_affinity, prompt_keys, gate, mask, scale, recompute_prompt_keys
    )


class _GatedPromptBypass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, key, hidden, down_weight, prompt_affinity, prompt_keys, gate, mask, scale, recompute):  # noqa: D102
        saved_keys = None if recompute is not None else prompt_keys
        ctx.save_for_backward(hidden, down_weight, prompt_affinity, saved_keys, gate, mask)
        ctx.scale = scale
        ctx.recompute = recompute
        return prompt_side_output(key, hidden, down_weight, *prepare_affinity(prompt_affinity, mask, scale),
                                  prompt_keys * gate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        hidden, down_weight, prompt_affinity, prompt_keys, gate, mask = ctx.saved_tensors
        if ctx.recompute is not None:
            prompt_keys = ctx.recompute()
        needs = ctx.needs_input_grad
        rows_t, bias = prepare_affinity(prompt_affinity, mask, ctx.scale)
        z, affinity = _affinity(hidden, down_weight, rows_t, bias)
        grad = grad_out.to(affinity.dtype)
        batch, tokens, num_prompts = affinity.shape
        if prompt_keys.dim() == 2:
            flat_affinity = affinity.reshape(batch * tokens, num_prompts)
            flat_grad = grad.reshape(batch * tokens, -1)
            key_grad = flat_affinity.t().mm(flat_grad)  # d(PK * g): K' x C_kv
            grad_affinity = flat_grad.mm((prompt_keys * gate).to(grad.dtype).t()).view(batch, tokens, num_prompts)
        else:
            key_grad = affinity.transpose(1, 2).bmm(grad)
            grad_affinity = grad.bmm((prompt_keys * gate).to(grad.dtype).transpose(1, 2))
        grad_prompt_keys = (key_grad * gate).to(prompt_keys.dtype) if needs[4] else None
        grad_gate = None
        if needs[5]:
            grad_gate = (key_grad.to(gate.dtype) * prompt_keys.to(gate.dtype)).reshape(-1, gate.shape[-1]).sum(dim=0)

        grad_logits = _softmax_backward(affinity, grad_affinity)
        grad_prompt_affinity = None
        if needs[3]:
            grad_prompt_affinity = _sum_to(grad_logits.transpose(-1, -2).matmul(z), prompt_affinity.shape) * ctx.scale
            grad_prompt_affinity = grad_prompt_affinity.to(prompt_affinity.dtype)
        grad_z = grad_logits.matmul(rows_t.transpose(-1, -2).to(grad_logits.dtype))
        grad_down = None
        if needs[2]:
            grad_down = (_flat(grad_z).t().mm(_flat(hidden))).to(down_weight.dtype)
        grad_hidden = grad_z.matmul(down_weight.to(grad_z.dtype)).to(hidden.dtype) if needs[1] else None
        grad_key = grad_out if needs[0] else None
        return grad_key, grad_hidden, grad_down, grad_prompt_affinity, grad_prompt_keys, grad_gate, None, None, None


# ------------------------------------------------------------------------------------------------ token side


class TokenSide(NamedTuple):
    """The token side's settings that are not tensors."""

    scale: float
    compute_dtype: torch.dtype
    """The adapters' products: fp32, or the autocast dtype."""
    projection_dtype: torch.dtype
    """Products with the frozen W_k: the autocast dtype, or W_k's own (as the frozen k_proj computes)."""
    head_loop: bool
    """Go through W_k head by head (see `_project_per_head`, `_projection_backward`): one pass over W_k forward
    and one backward instead of two each, for a few cheap passes over the rows per head (CPUs, enough rows)."""


def token_side_output(
    hidden: torch.Tensor, key_weight: torch.Tensor, key_bias: torch.Tensor | None, down_weight: torch.Tensor,
    rows_t: torch.Tensor, bias: torch.Tensor | None, prompts: PromptPieces, gate: torch.Tensor, options: TokenSide,
) -> torch.Tensor:
    """x . W_k^T + b + g * W_k (a . P), the token-side forward (also used as is without autograd, e.g. while
    decoding). `hidden` is the frozen k_proj's input; `down_weight` and `rows_t`/`bias` (from `prepare_affinity`)
    are in the compute dtype; `gate` has one value per KV head. With g = 0 the result is exactly the frozen
    k_proj's output."""
    gains = gate.tolist() if options.head_loop else None
    if gains is not None and not any(gains):
        return F.linear(hidden, key_weight, key_bias)
    _, affinity = _affinity(hidden.to(options.compute_dtype), down_weight, rows_t, bias)
    mixed = prompts.mix(affinity)
    if gains is not None:
        return _project_per_head(hidden, mixed, key_weight, key_bias, gains, options.projection_dtype)
    dtype = options.projection_dtype
    key = F.linear(hidden, key_weight, key_bias)  # exactly the frozen k_proj (autocast applies as it would)
    return _add_gated(key, F.linear(mixed.to(dtype), key_weight.to(dtype)), gate)


def _project_per_head(
    hidden: torch.Tensor, mixed: torch.Tensor, key_weight: torch.Tensor, key_bias: torch.Tensor | None,
    gains: list[float], dtype: torch.dtype,
) -> torch.Tensor:
    """x . W^T + b + g * (mixed . W^T) as (x + g_h mixed) . W_h^T head by head: one pass over W instead of two."""
    x, mixed = _flat(hidden).to(dtype), _flat(mixed).to(dtype)
    weight = key_weight.to(dtype)
    head_dim = weight.shape[0] // len(gains)
    out = torch.empty(len(gains), x.shape[0], head_dim, dtype=dtype, device=x.device)
    inputs = torch.empty_like(x)
    for head, gain in enumerate(gains):
        torch.add(x, mixed, alpha=gain, out=inputs)
        torch.mm(inputs, weight[head * head_dim : (head + 1) * head_dim].t(), out=out[head])
    out = out.transpose(0, 1).reshape(*hidden.shape[:-1], -1)
    return out if key_bias is None else out.add_(key_bias.to(dtype))


def gated_token_bypass(
    hidden: torch.Tensor,
    key_weight: torch.Tensor,
    key_bias: torch.Tensor | None,
    down_weight: torch.Tensor,
    up_weight: torch.Tensor,
    shared: torch.Tensor | None,
    per_sample: torch.Tensor | None,
    offset: torch.Tensor | None,
    gate: torch.Tensor,
    mask: torch.Tensor | None,
    options: TokenSide,
) -> torch.Tensor:
    """Token side: the frozen key x . W_k^T + b plus g * W_k (a . P(b)), B x M x C_kv.

    `hidden` is the frozen k_proj's input (B x M x C); `key_weight`/`key_bias` are the frozen k_proj's (the bias is
    added once, with the frozen key); the prompt set is given in pieces (see `PromptPieces`); `gate` has one value
    per KV head; `mask` (B x K', bool) marks the valid prompts of each sample. The frozen weights must not require
    gradients.
    """
    if key_weight.requires_grad or (key_bias is not None and key_bias.requires_grad):
        raise ValueError("the token-side bypass computes the frozen k_proj itself: its weights must be frozen")
    return _GatedTokenBypass.apply(
        hidden, key_weight, key_bias, down_weight, up_weight, shared, per_sample, offset, gate, mask, options
    )


def _projection_backward(
    grad_out: torch.Tensor, key_weight: torch.Tensor, mixed: torch.Tensor, gate: torch.Tensor,
    need_input: bool, need_gate: bool, options: TokenSide,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """For out = x . W^T + g * (mixed . W^T): (d x through W, d mixed, d g), rows flattened.

    Per KV head h, with G_h the output gradient's columns of that head and W_h its rows of W: d x = sum_h G_h W_h,
    d mixed = sum_h g_h G_h W_h and d g_h = <G_h W_h, mixed>. The head loop forms each G_h W_h once and uses it
    three times: the multiply-adds of the frozen projection's own input gradient, and three passes over the rows.
    Without it: G W, (G * g) W and mixed W^T for the gate, three products with W.
    """
    dtype = options.projection_dtype
    weight = key_weight.to(dtype)
    grad = _flat(grad_out).to(dtype)
    mixed = _flat(mixed)
    heads = gate.shape[0]
    if not options.head_loop:
        grad_mixed = _gated(grad, gate).to(dtype) @ weight
        grad_input = grad @ weight if need_input else None
        grad_gate = None
        if need_gate:
            projected = (mixed.to(dtype) @ weight.t()).to(gate.dtype)
            grad_gate = (grad.to(gate.dtype) * projected).view(-1, heads, weight.shape[0] // heads).sum(dim=(0, 2))
        return grad_input, grad_mixed, grad_gate

    accumulate = torch.promote_types(dtype, torch.float32)
    mixed = mixed.to(accumulate).reshape(-1)
    head_dim = weight.shape[0] // heads
    product = torch.empty(grad.shape[0], weight.shape[1], dtype=dtype, device=grad.device)
    grad_mixed = grad_input = None
    dots: list[torch.Tensor] = []
    for head, gain in enumerate(gate.tolist()):
        columns = slice(head * head_dim, (head + 1) * head_dim)
        torch.mm(grad[:, columns], weight[columns], out=product)
        term = product.to(accumulate)
        if grad_mixed is None:
            grad_mixed = term * gain
            if need_input:
                grad_input = term.clone() if term is product else term
        else:
            grad_mixed.add_(term, alpha=gain)
            if need_input:
                grad_input.add_(term)
        if need_gate:
            dots.append(torch.dot(term.reshape(-1), mixed))
    grad_gate = torch.stack(dots).to(gate.dtype) if need_gate else None
    return grad_input, grad_mixed, grad_gate


class _GatedTokenBypass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, key_weight, key_bias, down_weight, up_weight, shared, per_sample, offset, gate, mask,  # noqa: D102
                options):
        ctx.save_for_backward(hidden, key_weight, down_weight, up_weight, shared, per_sample, offset, gate, mask)
        ctx.options = options
        dtype = options.compute_dtype
        prompts = PromptPieces(shared, per_sample, offset, dtype)
        rows_t, bias = prepare_affinity(prompts.affinity_rows(up_weight.to(dtype)), mask, options.scale)
        return token_side_output(
            hidden, key_weight, key_bias, down_weight.to(dtype), rows_t, bias, prompts, gate, options
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        hidden, key_weight, down_weight, up_weight, shared, per_sample, offset, gate, mask = ctx.saved_tensors
        options = ctx.options
        needs = ctx.needs_input_grad
        dtype = options.compute_dtype
        prompts = PromptPieces(shared, per_sample, offset, dtype)
        x, down, up = hidden.to(dtype), down_weight.to(dtype), up_weight.to(dtype)
        # The K' x r prompt projections are recomputed too: per sample they outweigh LoRA's rank-r activations.
        prompt_affinity = prompts.affinity_rows(up)
        rows_t, bias = prepare_affinity(prompt_affinity, mask, options.scale)
        z, affinity = _affinity(x, down, rows_t, bias)
        mixed = prompts.mix(affinity)
        grad_input, grad_mixed, grad_gate = _projection_backward(
            grad_out, key_weight, mixed, gate, needs[0], needs[8], options
        )
        del mixed
        grad_mixed = grad_mixed.to(dtype).view_as(x)
        grad_logits = _softmax_backward(affinity, prompts.grad_affinity(grad_mixed))
        if prompt_affinity.dim() == 2:
            grad_rows = (_flat(grad_logits).t() @ _flat(z)).mul_(options.scale)
        else:
            grad_rows = grad_logits.transpose(1, 2).bmm(z).mul_(options.scale)
        grad_shared, grad_sample, grad_offset, grad_up = prompts.grads(
            affinity, grad_mixed, grad_rows, up, (needs[5], needs[6], needs[7], needs[4])
        )
        grad_z = torch.matmul(grad_logits, rows_t.transpose(-1, -2))
        grad_down = (_flat(grad_z).t() @ _flat(x)).to(down_weight.dtype) if needs[3] else None
        grad_hidden = None
        if needs[0]:
            grad_hidden = grad_input.view(*x.shape[:-1], -1).to(dtype).add_(grad_z @ down).to(hidden.dtype)
        return (
            grad_hidden, None, None, grad_down,
            None if grad_up is None else grad_up.to(up_weight.dtype),
            None if grad_shared is None else grad_shared.to(shared.dtype),
            None if grad_sample is None else grad_sample.to(per_sample.dtype),
            None if grad_offset is None else grad_offset.to(offset.dtype),
            grad_gate, None, None,
        )
