"""The prompt-side bypass (hand-written backward) against the plain autograd composition of method.md §1.

The token side has its own tests in test_association.py."""
from __future__ import annotations

import pytest
import torch

from mm_excitor.methods.excitor.bypass import gated_prompt_bypass
from bench.timing import storages_saved_for_backward


def reference(key, hidden, down_weight, prompt_affinity, prompt_keys, gate, mask, scale):
    """The block written op by op, as autograd differentiates it."""
    z = hidden @ down_weight.t()
    logits = (z @ prompt_affinity.transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    return key + logits.softmax(dim=-1) @ (prompt_keys * gate)


def inputs(per_sample: bool, masked: bool, dtype=torch.float64, batch=3, tokens=5, width=12, kv=8, prompts=4, rank=3):
    torch.manual_seed(0)
    shape = (batch, prompts) if per_sample else (prompts,)
    tensors = dict(
        key=torch.randn(batch, tokens, kv, dtype=dtype),
        hidden=torch.randn(batch, tokens, width, dtype=dtype),
        down_weight=torch.randn(rank, width, dtype=dtype),
        prompt_affinity=torch.randn(*shape, rank, dtype=dtype),
        prompt_keys=torch.randn(*shape, kv, dtype=dtype),
        gate=torch.randn(kv, dtype=dtype),
    )
    for tensor in tensors.values():
        tensor.requires_grad_(True)
    mask = None
    if masked:
        mask = torch.ones(batch, prompts, dtype=torch.bool)
        mask[0, -2:] = False  # a sample without image: its visual prompts are masked out
    return tensors, mask


@pytest.mark.parametrize("per_sample,masked", [(False, False), (True, False), (True, True)])
def test_gradients_pass_gradcheck(per_sample, masked):
    tensors, mask = inputs(per_sample, masked)
    names = list(tensors)

    def fused(*args):
        return gated_prompt_bypass(*args, mask, 0.3)

    assert torch.autograd.gradcheck(fused, tuple(tensors[n] for n in names))


@pytest.mark.parametrize("per_sample,masked", [(False, False), (True, True)])
def test_output_and_gradients_equal_the_autograd_composition(per_sample, masked):
    tensors, mask = inputs(per_sample, masked, dtype=torch.float32)
    grad_out = torch.randn_like(tensors["key"])
    results = []
    for function in (gated_prompt_bypass, reference):
        out = function(*tensors.values(), mask, 0.3)
        grads = torch.autograd.grad(out, list(tensors.values()), grad_out)
        results.append((out, grads))
    (out, grads), (expected_out, expected_grads) = results
    torch.testing.assert_close(out, expected_out)
    for name, grad, expected in zip(tensors, grads, expected_grads):
        torch.testing.assert_close(grad, expected, msg=lambda m, n=name: f"{n}: {m}")


def test_frozen_inputs_get_no_gradient_work():
    tensors, mask = inputs(False, False, dtype=torch.float32)
    tensors["hidden"].requires_grad_(False)
    tensors["key"].requires_grad_(False)
    out = gated_prompt_bypass(*tensors.values(), mask, 0.3)
    out.sum().backward()
    assert tensors["hidden"].grad is None and tensors["key"].grad is None
    assert all(tensors[n].grad is not None for n in ("down_weight", "prompt_affinity", "prompt_keys", "gate"))


def saved_bytes(tokens: int) -> int:
    # Only the hidden states (needed for the down projection's gradient) may grow with the sequence; they are an
    # argument too, so anything else the function saves per token shows up here.
    tensors, mask = inputs(False, False, dtype=torch.float32, tokens=tokens)
    return sum(storages_saved_for_backward(lambda: gated_prompt_bypass(*tensors.values(), mask, 0.3),
                                           tensors.values()).values())


def test_nothing_per_token_is_saved_for_backward():
    assert saved_bytes(tokens=4) == saved_bytes(tokens=400)


def test_gate_at_zero_returns_the_key_exactly():
    tensors, mask = inputs(True, True, dtype=torch.float32)
    with torch.no_grad():
        tensors["gate"].zero_()
        out = gated_prompt_bypass(*tensors.values(), mask, 0.3)
    assert torch.equal(out, tensors["key"])


def test_recomputed_prompt_keys_give_the_same_gradients_and_are_not_kept():
    tensors, mask = inputs(False, False, dtype=torch.float32)
    prompts = torch.randn(4, 12, requires_grad=True)
    key_weight = torch.randn(8, 12)
    grad_out = torch.randn_like(tensors["key"])
    results, kept = [], []
    for recompute in (None, lambda: prompts.detach() @ key_weight.t()):
        storages: set[int] = set()

        def pack(tensor, storages=storages):
            storages.add(tensor.untyped_storage().data_ptr())
            return tensor

        prompt_keys = prompts @ key_weight.t()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            args = {**tensors, "prompt_keys": prompt_keys}
            out = gated_prompt_bypass(*args.values(), mask, 0.3, recompute)
        kept.append(prompt_keys.untyped_storage().data_ptr() in storages)
        results.append(torch.autograd.grad(out, [prompts, *tensors.values()], grad_out, allow_unused=True))
    assert kept == [True, False]
    for with_saved, with_recompute in zip(*results):
        if with_saved is None:
            assert with_recompute is None
        else:
            torch.testing.assert_close(with_recompute, with_saved, rtol=0, atol=0)


@pytest.mark.parametrize("order,expected", [("prompt", [(8,), (30, 4)]), ("token", [])])
def test_language_only_block_keeps_no_prompt_keys_and_nothing_per_token_but_its_input(order, expected):
    from mm_excitor import ExcitorConfig
    from mm_excitor.methods.excitor.layer import ExcitorKeyProjection

    config = ExcitorConfig(rank=4, key_association=order)
    block = ExcitorKeyProjection(torch.nn.Linear(16, 8, bias=False).requires_grad_(False), 2, config)
    parameters = {p.untyped_storage().data_ptr() for p in block.parameters()}
    hidden = torch.randn(2, 7, 16, requires_grad=True)
    kept: list[torch.Tensor] = []

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in parameters:
            kept.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(hidden).sum().backward()
    others = sorted(tuple(t.shape) for t in kept if t.untyped_storage().data_ptr() != hidden.untyped_storage().data_ptr())
    # Besides its input, the prompt side keeps the K x r prompt projections and the gate expanded to the key width,
    # the token side nothing: no prompt keys (K x C_kv) and nothing per token.
    assert others == expected
