"""The fast paths (mm_excitor/methods/excitor/fast_path.py): prompt side W_k P and token side W_k (a . P) give the keys of the
block's reference forward.

Checked against the unmodified Hugging Face model (exact at init), against autograd's own composition of the
token side (gradcheck in float64 and op by op), and against the reference after training (gates open), in values
and gradients."""
from __future__ import annotations

import copy

import pytest
import torch

from mm_excitor import ExcitorConfig, VisualPrompts, apply_excitor, excitor_blocks
from mm_excitor.methods.excitor import fast_path
from mm_excitor.methods.excitor.bypass import TokenSide, gated_token_bypass
from mm_excitor.methods.excitor.fast_path import association_costs
from bench.timing import storages_saved_for_backward
from tests.tiny_models import tiny_model

ORDERS = ("prompt", "token", "token-head-loop")


def key_association(order: str, monkeypatch) -> str:
    """'token-head-loop' is the token side through W_k head by head, as on a CPU with enough token rows (the tiny
    test batches have fewer, and would use plain products)."""
    if order == "token-head-loop":
        monkeypatch.setattr(fast_path, "HEAD_LOOP_MIN_ROWS", 1)
        return "token"
    return order


PIECES = {
    "shared": dict(shared=True, per_sample=False, offset=False, masked=False),
    "concat": dict(shared=True, per_sample=True, offset=True, masked=True),
    "per-sample": dict(shared=False, per_sample=True, offset=False, masked=False),
}


# ---------------------------------------------------------------------------------- the autograd function


def token_inputs(pieces: dict, dtype=torch.float64, batch=2, tokens=3, width=8, heads=2, head_dim=3, rank=2,
                 num_shared=3, num_visual=4, bias=True):
    torch.manual_seed(0)
    tensors = dict(
        hidden=torch.randn(batch, tokens, width, dtype=dtype),
        key_weight=torch.randn(heads * head_dim, width, dtype=dtype),
        key_bias=torch.randn(heads * head_dim, dtype=dtype) if bias else None,
        down_weight=torch.randn(rank, width, dtype=dtype),
        up_weight=torch.randn(width, rank, dtype=dtype),
        shared=torch.randn(num_shared, width, dtype=dtype) if pieces["shared"] else None,
        per_sample=torch.randn(batch, num_visual, width, dtype=dtype) if pieces["per_sample"] else None,
        offset=torch.randn(width, dtype=dtype) if pieces["offset"] else None,
        gate=torch.randn(heads, dtype=dtype),
    )
    for name, tensor in tensors.items():
        if tensor is not None and not name.startswith("key_"):
            tensor.requires_grad_(True)
    mask = None
    if pieces["masked"]:
        mask = torch.ones(batch, num_shared * pieces["shared"] + num_visual, dtype=torch.bool)
        mask[0, -num_visual:] = False  # a sample without an image sees the shared prompts only
    return tensors, mask


def token_reference(hidden, key_weight, key_bias, down_weight, up_weight, shared, per_sample, offset, gate, mask,
                    scale):
    """The token side written op by op, as autograd differentiates it."""
    parts = []
    if shared is not None:
        parts.append(shared.expand(hidden.shape[0], -1, -1))
    if per_sample is not None:
        parts.append(per_sample if offset is None else per_sample + offset)
    prompts = torch.cat(parts, dim=1)
    logits = (hidden @ down_weight.t()) @ (prompts @ up_weight).transpose(1, 2) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    mixed = logits.softmax(dim=-1) @ prompts
    gate = gate.repeat_interleave(key_weight.shape[0] // gate.shape[0])
    return torch.nn.functional.linear(hidden, key_weight, key_bias) + gate * (mixed @ key_weight.t())


@pytest.fixture(params=[True, False], ids=["head-loop", "plain-products"])
def head_loop(request):
    return request.param


@pytest.mark.parametrize("pieces", list(PIECES))
def test_token_side_passes_gradcheck(pieces, head_loop):
    tensors, mask = token_inputs(PIECES[pieces])
    names = [n for n, t in tensors.items() if t is not None and t.requires_grad]
    options = TokenSide(0.3, torch.float64, torch.float64, head_loop)

    def function(*args):
        return gated_token_bypass(**{**tensors, **dict(zip(names, args))}, mask=mask, options=options)

    assert torch.autograd.gradcheck(function, tuple(tensors[n] for n in names))


@pytest.mark.parametrize("pieces", list(PIECES))
def test_token_side_equals_the_autograd_composition(pieces, head_loop):
    tensors, mask = token_inputs(PIECES[pieces], dtype=torch.float32, bias=pieces != "shared")
    names = [n for n, t in tensors.items() if t is not None and t.requires_grad]
    out = gated_token_bypass(**tensors, mask=mask, options=TokenSide(0.3, torch.float32, torch.float32, head_loop))
    expected = token_reference(**tensors, mask=mask, scale=0.3)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [tensors[n] for n in names], grad_out)
    expected_grads = torch.autograd.grad(expected, [tensors[n] for n in names], grad_out)
    for name, grad, expected_grad in zip(names, grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, msg=lambda m, n=name: f"{n}: {m}")


def test_token_side_at_zero_gate_returns_the_frozen_key_exactly():
    tensors, mask = token_inputs(PIECES["concat"], dtype=torch.float32)
    with torch.no_grad():
        tensors["gate"].zero_()
        out = gated_token_bypass(**tensors, mask=mask, options=TokenSide(0.3, torch.float32, torch.float32, True))
        frozen = torch.nn.functional.linear(tensors["hidden"], tensors["key_weight"], tensors["key_bias"])
    assert torch.equal(out, frozen)


def test_token_side_refuses_a_trainable_key_projection():
    tensors, mask = token_inputs(PIECES["shared"], dtype=torch.float32)
    tensors["key_weight"].requires_grad_(True)
    with pytest.raises(ValueError, match="must be frozen"):
        gated_token_bypass(**tensors, mask=mask, options=TokenSide(0.3, torch.float32, torch.float32, True))


def saved_storages(tokens: int, pieces: str) -> dict[int, int]:
    """Bytes of each storage the token side saves for backward, apart from its tensor arguments."""
    tensors, mask = token_inputs(PIECES[pieces], dtype=torch.float32, tokens=tokens)
    options = TokenSide(0.3, torch.float32, torch.float32, True)
    return storages_saved_for_backward(lambda: gated_token_bypass(**tensors, mask=mask, options=options),
                                       (*tensors.values(), mask))


@pytest.mark.parametrize("pieces", ["shared", "concat"])
def test_token_side_saves_only_its_arguments(pieces):
    """No affinity, mix, projected mix, prompt projection or concatenated prompt set is kept: backward recomputes
    them; so nothing grows with the tokens but the input."""
    assert saved_storages(4, pieces) == saved_storages(400, pieces) == {}


# ------------------------------------------------------------------------------------------ the block


def model_with(order: str | None, family: str = "llama-gqa", visual: str | None = None, dtype=torch.float32,
               **config):
    values = dict(num_layers=3, num_prompts=5, rank=4, visual_prompt_mode=visual)
    if order is not None:
        values["key_association"] = order
    excitor = ExcitorConfig(**{**values, **config})
    return apply_excitor(tiny_model(family).to(dtype), excitor)


def open_gates(model, seed: int = 3) -> None:
    """Trained-looking blocks: every trainable tensor random, gates well away from zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in excitor_blocks(model):
            for parameter in block.parameters():
                if parameter.requires_grad:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def batch(vocab: int = 96):
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    return ids.masked_fill(mask == 0, 0), mask


def visual_prompts(samples: int = 3, count: int = 11, width: int = 64, **kwargs) -> VisualPrompts:
    """The `visual_prompts` argument of the language model: one row without an image."""
    torch.manual_seed(2)
    return VisualPrompts(torch.randn(samples, count, width, **kwargs) * 3, torch.tensor([True, False, True])[:samples])


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_visual_prompts_are_exact_at_init_in_both_orders(order, attn, monkeypatch):
    base = tiny_model("qwen2", attn)
    config = ExcitorConfig(num_layers=3, num_prompts=5, rank=4, visual_prompt_mode="concat",
                           key_association=key_association(order, monkeypatch))
    adapted = apply_excitor(copy.deepcopy(base), config)
    ids, mask = batch()
    inputs = dict(input_ids=ids, attention_mask=mask, visual_prompts=visual_prompts())
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(adapted(**inputs).logits, expected)
    # With gradients, through the autograd functions, too.
    assert torch.equal(adapted(**inputs).logits.detach(), expected)


def outputs_and_grads(order: str, family: str, visual: str | None, monkeypatch):
    model = model_with(key_association(order, monkeypatch), family, visual)
    open_gates(model)
    ids, mask = batch()
    inputs = {n: p for n, p in model.named_parameters() if p.requires_grad}
    kwargs = {}
    if visual:
        kwargs["visual_prompts"] = visual_prompts(requires_grad=True)
        inputs["visual tokens"] = kwargs["visual_prompts"].tokens
    logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    loss = logits.log_softmax(-1)[..., 5].mean()
    return logits.detach(), dict(zip(inputs, torch.autograd.grad(loss, list(inputs.values()))))


@pytest.mark.parametrize("fast", ("auto", *ORDERS))
@pytest.mark.parametrize("family,visual", [("llama-mha", None), ("qwen2", "concat"), ("mistral", "add")])
def test_every_fast_path_gives_the_reference_outputs_and_gradients_after_training(family, visual, fast, monkeypatch):
    logits_p, grads_p = outputs_and_grads("reference", family, visual, monkeypatch)
    logits_t, grads_t = outputs_and_grads(fast, family, visual, monkeypatch)
    ids, mask = batch()
    with torch.no_grad():
        assert not torch.allclose(logits_p, tiny_model(family)(input_ids=ids, attention_mask=mask).logits)
    torch.testing.assert_close(logits_t, logits_p, rtol=1e-5, atol=1e-5)
    assert grads_p.keys() == grads_t.keys()
    for name in grads_p:
        assert grads_p[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_t[name], grads_p[name], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")


BLOCKS = (*ORDERS, "reference", "separate_kv", "direct", "separate_kv+direct")
"""Every fast path of the shared, projected block, its reference, and the faithful variants (reference only)."""


def block_settings(name: str, monkeypatch) -> dict:
    """ExcitorConfig fields of a BLOCKS entry."""
    if name in ("reference", *ORDERS):
        return dict(key_association=key_association(name, monkeypatch))
    return dict(visual_projection="separate_kv" if "separate_kv" in name else "shared",
                extra_key="direct" if "direct" in name else "projected")


def model_prompts(model, samples: int = 3) -> VisualPrompts:
    """Visual prompts of the model's prompt width, with separate value tokens where the blocks take them."""
    block = excitor_blocks(model)[0]
    prompts = visual_prompts(samples, width=block.prompt_width)
    if block.separate_kv:
        prompts = VisualPrompts(prompts.tokens, prompts.has_image, -prompts.tokens.flip(1))
    return prompts


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("visual", [False, True], ids=["language-only", "visual"])
def test_cached_generation_equals_uncached(block, visual, monkeypatch):
    model = model_with(None, "llama-gqa", "concat" if visual else None, **block_settings(block, monkeypatch))
    open_gates(model)
    ids, mask = batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    prompts = model_prompts(model) if visual else None
    with torch.no_grad():
        cached = model.generate(**kwargs, use_cache=True, visual_prompts=prompts)
        uncached = model.generate(**kwargs, use_cache=False, visual_prompts=prompts)
        # each row's prompts for each of its beams, as generate expands the rows
        beams = None if prompts is None else prompts.repeat_interleave(3)
        beams_cached = model.generate(**kwargs, num_beams=3, use_cache=True, visual_prompts=beams)
        beams_uncached = model.generate(**kwargs, num_beams=3, use_cache=False, visual_prompts=beams)
    assert torch.equal(cached, uncached)
    assert torch.equal(beams_cached, beams_uncached)


@pytest.mark.parametrize("order", (*ORDERS, "reference"))
def test_bf16_base_with_autocast_matches_fp32_in_every_path(order, monkeypatch):
    """fp32 adapters on a bf16 base under autocast: the same block as in fp32, to bf16 precision, with fp32
    gradients for every trainable tensor."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = model_with(key_association(order, monkeypatch), "qwen2", "concat", dtype=dtype)
        open_gates(model)
        ids, mask = batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100),
                         visual_prompts=visual_prompts()).loss
        loss.backward()
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in trainable.values())
        results[dtype] = loss.item(), {n: p.grad for n, p in trainable.items()}
    (loss32, grads32), (loss16, grads16) = results[torch.float32], results[torch.bfloat16]
    assert abs(loss16 - loss32) < 0.05 * abs(loss32)
    for name, grad in grads32.items():
        cosine = torch.nn.functional.cosine_similarity(grads16[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.95, (name, cosine)


# ---------------------------------------------------------------------------------------- the choice


LLAMA7B = dict(hidden=4096, key_width=4096, heads=32)


def test_costs_favour_the_token_side_for_visual_prompts_and_short_captions():
    # The COCO recipe's micro-batch: 16 captions x 32 tokens, 30 learnable + 257 visual prompts per sample.
    for head_loop in (True, False):
        costs = association_costs(tokens=16 * 32, prompts=287, prompt_rows=30 + 16 * 257, training=True,
                                  shared_prompts=False, head_loop=head_loop, **LLAMA7B)
        assert costs.token_side < costs.prompt_side / 2
    # One forward without gradients on new images (scoring): M rows instead of K' rows per sample.
    costs = association_costs(tokens=16 * 32, prompts=287, prompt_rows=30 + 16 * 257, training=False,
                              shared_prompts=False, head_loop=True, **LLAMA7B)
    assert costs.token_side < costs.prompt_side


def test_costs_favour_the_prompt_side_for_shared_prompts_and_decoding():
    # Language-only, 2 x 512 tokens: 30 shared prompts, three products with W_k per step, against the token side's
    # passes over 1,024 rows (CPU) or its three products of 1,024 rows (GPU).
    for head_loop in (True, False):
        costs = association_costs(tokens=1024, prompts=30, prompt_rows=30, training=True, shared_prompts=True,
                                  head_loop=head_loop, **LLAMA7B)
        assert costs.prompt_side < costs.token_side
    # 1 x 128 tokens on a GPU: 90 rows through W_k against 384.
    costs = association_costs(tokens=128, prompts=30, prompt_rows=30, training=True, shared_prompts=True,
                              head_loop=False, **LLAMA7B)
    assert costs.prompt_side < costs.token_side / 3
    # Decoding one token per sample once the prompt keys are memoised: no product with W_k at all.
    costs = association_costs(tokens=16, prompts=287, prompt_rows=30 + 16 * 257, training=False,
                              shared_prompts=False, head_loop=False, **LLAMA7B)
    assert costs.prompt_side - costs.prompt_keys < costs.token_side / 10


def spy_on_orders(monkeypatch) -> list[str]:
    calls: list[str] = []
    for name, order in (("gated_prompt_bypass", "prompt"), ("prompt_side_output", "prompt"),
                        ("gated_token_bypass", "token"), ("token_side_output", "token")):
        original = getattr(fast_path, name)

        def spy(*args, original=original, order=order, **kwargs):
            calls.append(order)
            return original(*args, **kwargs)

        monkeypatch.setattr(fast_path, name, spy)
    return calls


def test_auto_picks_the_cheaper_order_per_call(monkeypatch):
    calls = spy_on_orders(monkeypatch)
    model = model_with("auto", visual="concat")
    open_gates(model)
    ids, mask = batch()  # 3 x 7 tokens; tiny model: C = 64, C_kv = 32, 2 KV heads; 5 learnable prompts
    for visual_count in (None, 40):
        if visual_count is None:
            kwargs = {}
            prompts, rows = 5, 5
        else:
            kwargs = dict(visual_prompts=VisualPrompts(torch.randn(3, visual_count, 64), torch.ones(3, dtype=torch.bool)))
            prompts, rows = 5 + visual_count, 5 + 3 * visual_count
        costs = association_costs(tokens=3 * 7, prompts=prompts, prompt_rows=rows, hidden=64, key_width=32, heads=2,
                                  training=True, shared_prompts=visual_count is None, head_loop=True)
        expected = "prompt" if costs.prompt_side <= costs.token_side else "token"
        assert expected == ("prompt" if visual_count is None else "token")  # both orders are exercised
        calls.clear()
        model(input_ids=ids, attention_mask=mask, **kwargs).logits.sum().backward()
        assert calls == [expected] * 3


def test_decoding_builds_the_prompt_keys_once_token_side_work_would_exceed_them(monkeypatch):
    calls = spy_on_orders(monkeypatch)
    model = model_with("auto", visual="concat", num_layers=1)
    open_gates(model)
    block = excitor_blocks(model)[0]
    visual = VisualPrompts(torch.randn(1, 40, 64), torch.ones(1, dtype=torch.bool))
    hidden = torch.randn(1, 3, 64)
    # Counting multiply-adds only: building the keys of one sample's 45 prompts costs 45 rows through W_k, a
    # decoding step one row (and its mix), so the first steps stay token-side.
    monkeypatch.setattr(fast_path, "OPERATOR_COST", {"cpu": 0})
    costs = association_costs(tokens=1, prompts=45, prompt_rows=5 + 40, hidden=64, key_width=32, heads=2,
                              training=False, shared_prompts=False, head_loop=False)
    steps_before_keys = -(-(costs.prompt_side - costs.token_side) // costs.token_side)
    assert 5 < steps_before_keys < 40
    with torch.no_grad():
        for _ in range(40):
            block(hidden[:, :1], visual)
    assert calls == ["token"] * steps_before_keys + ["prompt"] * (40 - steps_before_keys)
    # New prompts start over; the token side gives the same keys as the prompt side.
    visual = VisualPrompts(visual.tokens.clone(), visual.has_image)
    calls.clear()
    with torch.no_grad():
        out = block(hidden, visual)
    assert calls == ["token"]
    forced = model_with("prompt", visual="concat", num_layers=1)
    forced.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(excitor_blocks(forced)[0](hidden, visual), out, rtol=1e-5, atol=1e-5)
    # With the cost of launching operators, a block this small builds the keys at once: decoding uses the memo.
    monkeypatch.undo()
    calls = spy_on_orders(monkeypatch)
    visual = VisualPrompts(visual.tokens.clone(), visual.has_image)
    with torch.no_grad():
        for _ in range(3):
            block(hidden[:, :1], visual)
    assert calls == ["prompt"] * 3


def test_key_association_is_validated():
    with pytest.raises(ValueError, match="key_association must be one of"):
        ExcitorConfig(key_association="keys")
    assert ExcitorConfig().key_association == "auto"
    for name in ("visual_projection", "extra_key"):
        with pytest.raises(ValueError, match=f"ExcitorConfig.{name} must be one of"):
            ExcitorConfig(**{name: "both"})
