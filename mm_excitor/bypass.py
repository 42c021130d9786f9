"""The Excitor's token-side bypass as one autograd function with a hand-written backward.

    out = key + softmax(z . PA^T * s) . (PK * g)      z = x . W_down^T, s = 1/sqrt(C)

PK (prompt keys W_k P) and PA (rank-r prompt projections P W_up) are computed by the caller. Autograd would save
z, the affinity, PK and PK * g for backward; this function saves only x (which the down projection needs anyway),
PA and g, and PK unless the caller can recompute it; z and the affinity are recomputed in backward (a rank-r
product and a softmax over K' prompts). Its activation memory therefore does not grow with the sequence beyond x,
and the gated prompt keys, the affinity and the bypass output never exist as separate tensors: the addition is
fused into the matrix product.

The products run in the dtype of the tensors passed in (the caller casts them: fp32, or the autocast dtype); the
softmax, the gating of the prompt keys and the gate's gradient run in at least fp32, the gate's own dtype.
"""
from __future__ import annotations

from typing import Callable

import torch


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
    """key (B x M x C_kv) plus the gated reconstructed key of every token; see the module docstring.

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


def _affinity(
    hidden: torch.Tensor, down_weight: torch.Tensor, prompt_affinity: torch.Tensor, mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, softmax(z . PA^T * s)) with masked prompts at zero weight."""
    z = torch.matmul(hidden, down_weight.t())
    softmax_dtype = torch.promote_types(z.dtype, torch.float32)
    logits = torch.matmul(z, prompt_affinity.transpose(-1, -2)).to(softmax_dtype) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    return z, logits.softmax(dim=-1).to(z.dtype)


def _sum_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a per-sample B x ... gradient over the batch when its input was shared by the batch."""
    return tensor.sum(dim=0) if tensor.dim() > len(shape) else tensor


class _GatedPromptBypass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, key, hidden, down_weight, prompt_affinity, prompt_keys, gate, mask, scale, recompute):  # noqa: D102
        _, affinity = _affinity(hidden, down_weight, prompt_affinity, mask, scale)
        gated_keys = (prompt_keys * gate).to(affinity.dtype)
        saved_keys = None if recompute is not None else prompt_keys
        ctx.save_for_backward(hidden, down_weight, prompt_affinity, saved_keys, gate, mask)
        ctx.scale = scale
        ctx.recompute = recompute
        if key.dtype != affinity.dtype:  # a frozen bf16 model with fp32 adapters and no autocast
            return key + torch.matmul(affinity, gated_keys).to(key.dtype)
        if gated_keys.dim() == 3:
            return torch.baddbmm(key, affinity, gated_keys)
        batch, tokens, width = key.shape  # one prompt set for the whole batch: a single 2-D product
        return torch.addmm(key.reshape(batch * tokens, width), affinity.reshape(batch * tokens, -1), gated_keys).view(
            batch, tokens, width
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        hidden, down_weight, prompt_affinity, prompt_keys, gate, mask = ctx.saved_tensors
        if ctx.recompute is not None:
            prompt_keys = ctx.recompute()
        needs = ctx.needs_input_grad
        z, affinity = _affinity(hidden, down_weight, prompt_affinity, mask, ctx.scale)
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

        # Softmax backward, then the two rank-r products.
        grad_logits = affinity * (grad_affinity - (grad_affinity * affinity).sum(dim=-1, keepdim=True))
        grad_logits = grad_logits * ctx.scale
        grad_prompt_affinity = None
        if needs[3]:
            grad_prompt_affinity = _sum_to(grad_logits.transpose(-1, -2).matmul(z), prompt_affinity.shape)
            grad_prompt_affinity = grad_prompt_affinity.to(prompt_affinity.dtype)
        grad_z = grad_logits.matmul(prompt_affinity.to(grad_logits.dtype))
        grad_down = None
        if needs[2]:
            grad_down = grad_z.reshape(-1, grad_z.shape[-1]).t().mm(hidden.reshape(-1, hidden.shape[-1]))
            grad_down = grad_down.to(down_weight.dtype)
        grad_hidden = grad_z.matmul(down_weight.to(grad_z.dtype)).to(hidden.dtype) if needs[1] else None
        grad_key = grad_out if needs[0] else None
        return grad_key, grad_hidden, grad_down, grad_prompt_affinity, grad_prompt_keys, grad_gate, None, None, None
