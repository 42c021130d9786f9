"""Properties of the Excitor block, each checked against the unmodified Hugging Face model."""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from mm_excitor import ExcitorConfig, VisualPrompts, apply_excitor, count_parameters, excitor_blocks
from mm_excitor.methods.excitor import fast_path
from mm_excitor.methods.excitor.layer import affinity_view
from tests.tiny_models import FAMILIES, tiny_model

CONFIG = ExcitorConfig(num_layers=3, num_prompts=5, rank=4)
ORDERS = ("auto", "prompt", "token", "token-head-loop", "reference", "direct")
"""The language-only blocks: every fast path, the reference forward, and the extra key without W_k."""


def with_order(order: str, monkeypatch) -> ExcitorConfig:
    """CONFIG with this path; 'token-head-loop' is the token side through W_k head by head, as on a CPU with enough
    token rows (the tiny test batches have fewer, and would use plain products); 'direct' is extra_key=direct (it
    runs the reference)."""
    if order == "direct":
        return replace(CONFIG, extra_key="direct")
    if order == "token-head-loop":
        monkeypatch.setattr(fast_path, "HEAD_LOOP_MIN_ROWS", 1)
        order = "token"
    return replace(CONFIG, key_association=order)


def padded_batch(padding_side: str, vocab: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (3, 9))
    mask = torch.ones_like(ids)
    for row, length in enumerate((9, 6, 4)):
        if padding_side == "left":
            mask[row, : 9 - length] = 0
        else:
            mask[row, length:] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("order", ORDERS)
def test_logits_equal_unmodified_model_at_init(family, attn, padding_side, order, monkeypatch):
    base = tiny_model(family, attn)
    adapted = apply_excitor(copy.deepcopy(base), with_order(order, monkeypatch))
    ids, mask = padded_batch(padding_side)
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).logits
        got = adapted(input_ids=ids, attention_mask=mask).logits
    assert len(excitor_blocks(adapted)) == CONFIG.num_layers
    assert torch.equal(got, expected)
    # With gradients on: the autograd functions of the training step are exact too.
    assert torch.equal(adapted(input_ids=ids, attention_mask=mask).logits.detach(), expected)


def test_excitor_changes_logits_once_gate_is_open():
    """Guards the test above: the exactness must come from the zero gate, not from a block that does nothing."""
    base = tiny_model()
    adapted = apply_excitor(copy.deepcopy(base), CONFIG)
    with torch.no_grad():
        for block in excitor_blocks(adapted):
            block.gate.fill_(0.5)
        ids, mask = padded_batch("right")
        assert not torch.allclose(adapted(input_ids=ids, attention_mask=mask).logits,
                                  base(input_ids=ids, attention_mask=mask).logits)


def train_steps(model, steps: int = 3, lr: float = 1e-2):
    ids, mask = padded_batch("right")
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


@pytest.mark.parametrize("order", ["auto", "direct"])
def test_training_moves_every_trainable_tensor_and_no_base_parameter(order, monkeypatch):
    base = tiny_model()
    adapted = apply_excitor(copy.deepcopy(base), with_order(order, monkeypatch))
    before = {name: p.detach().clone() for name, p in adapted.named_parameters()}
    train_steps(adapted)
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".k_proj." in name and not name.endswith("base.weight") for name in trainable)
    for name, parameter in adapted.named_parameters():
        if name in trainable:
            assert not torch.equal(parameter, before[name]), f"{name} did not change"
        else:
            assert torch.equal(parameter, before[name]), f"frozen {name} changed"
    # The frozen weights are still bit-identical to the unmodified model's.
    base_params = dict(base.named_parameters())
    for name, parameter in adapted.named_parameters():
        if not parameter.requires_grad:
            assert torch.equal(parameter, base_params[name.replace("k_proj.base.", "k_proj.")])


def test_only_the_gate_has_a_gradient_at_step_one():
    adapted = apply_excitor(tiny_model(), CONFIG)
    ids, mask = padded_batch("right")
    adapted(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    for block in excitor_blocks(adapted):
        assert block.gate.grad.abs().sum() > 0
        assert block.prompts.grad.abs().sum() == 0 and block.down.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("gain", [1.0, 10.0])
def test_affinity_starts_at_the_configured_gain(gain):
    """RMS(W_up W_down x) = affinity_init_gain * RMS(x) at init: with nn.Linear's default (1/3) the affinity starts
    uniform on a real model, and a uniform affinity shifts every key by the same vector, which the softmax ignores."""
    torch.manual_seed(0)
    block = excitor_blocks(apply_excitor(tiny_model(), replace(CONFIG, rank=64, affinity_init_gain=gain)))[0]
    x = torch.randn(4096, block.base.in_features)
    with torch.no_grad():
        ratio = float(block.up(block.down(x)).pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    assert ratio == pytest.approx(gain, rel=0.25)


@pytest.mark.parametrize("mode", [None, "concat", "add"])
def test_affinity_view_is_what_the_block_adds_to_the_keys(mode):
    """`affinity_view` (what experiments/affinity.py reports) must be the block's own arithmetic: its mixes give the
    keys the block returns, with learnable prompts only and with visual prompts (one sample without an image)."""
    torch.manual_seed(0)
    block = excitor_blocks(apply_excitor(tiny_model(), replace(CONFIG, visual_prompt_mode=mode)))[0]
    width = block.base.in_features
    with torch.no_grad():
        block.gate.copy_(torch.linspace(0.3, 0.9, block.num_kv_heads))
        visual = None
        if block.visual_offset is not None:
            block.visual_offset.normal_()
            visual = VisualPrompts(torch.randn(2, 6, width), torch.tensor([True, False]))
        x = torch.randn(2, 7, width)
        view = affinity_view(block, x, visual)
        keys = block(x, visual)
    shift = (block.base(view.mixes) - block.base(torch.zeros(width))).unflatten(-1, (block.num_kv_heads, -1))
    expected = block.base(x) + (shift * block.gate[:, None]).flatten(-2)
    assert torch.allclose(keys, expected, atol=1e-5)
    prompts = CONFIG.num_prompts + (6 if mode == "concat" else 0)
    assert view.logits.shape == (2, 7, prompts) and view.num_shared == (CONFIG.num_prompts if mode != "add" else 0)
    if mode == "concat":  # the sample without an image gives its visual prompts no weight
        assert torch.isinf(view.logits[1, :, CONFIG.num_prompts:]).all() and view.logits[0].isfinite().all()


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2"])
@pytest.mark.parametrize("order", ["auto", "direct"])
def test_greedy_generation_with_cache_equals_without_after_training(family, order, monkeypatch):
    adapted = apply_excitor(tiny_model(family), with_order(order, monkeypatch))
    with torch.no_grad():
        for block in excitor_blocks(adapted):
            block.gate.normal_(std=1.0)
    ids, mask = padded_batch("left")
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = adapted.generate(**kwargs, use_cache=True)
        uncached = adapted.generate(**kwargs, use_cache=False)
        beams = adapted.generate(**kwargs, num_beams=3, use_cache=True)
    assert torch.equal(cached, uncached)
    assert beams.shape[0] == ids.shape[0]


@pytest.mark.parametrize("order", ["auto", "direct"])
def test_kv_cache_keeps_the_grouped_query_shape(order, monkeypatch):
    base = tiny_model("llama-gqa")
    adapted = apply_excitor(copy.deepcopy(base), with_order(order, monkeypatch))
    ids, mask = padded_batch("left")
    with torch.no_grad():
        base_cache = base(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
        cache = adapted(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
    for layer in range(4):
        assert cache.layers[layer].keys.shape == base_cache.layers[layer].keys.shape
        assert cache.layers[layer].keys.shape[1] == 2  # KV heads, not query heads


def test_llama_7b_defaults_count_on_meta_device():
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    apply_excitor(model, ExcitorConfig())
    counts = count_parameters(model)
    gates = 30 * 32
    assert counts.trainable == 30 * (30 * 4096 + 2 * 4096 * 16) + gates == 7_618_560 + gates
    assert counts.total > 6_700_000_000
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("order", ORDERS)
def test_bf16_base_with_fp32_trainables_under_autocast_and_gradient_checkpointing(order, monkeypatch):
    def grads(checkpointing: bool):
        model = tiny_model().to(torch.bfloat16)
        apply_excitor(model, with_order(order, monkeypatch))
        with torch.no_grad():
            for block in excitor_blocks(model):
                block.gate.fill_(0.3)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids, mask = padded_batch("right")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert all(p.dtype == torch.float32 for p in trainable.values())
        assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())
        return {n: p.grad for n, p in trainable.items()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name])


@pytest.mark.parametrize("order", ORDERS)
def test_bf16_base_without_autocast_is_exact_at_init(order, monkeypatch):
    base = tiny_model().to(torch.bfloat16)
    adapted = apply_excitor(copy.deepcopy(base), with_order(order, monkeypatch))
    ids, mask = padded_batch("left")
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=ids, attention_mask=mask).logits,
                           base(input_ids=ids, attention_mask=mask).logits)


def test_bad_use_gives_clear_errors():
    model = apply_excitor(tiny_model(), CONFIG)
    with pytest.raises(ValueError, match="already has Excitor blocks"):
        apply_excitor(model, CONFIG)
    with pytest.raises(ValueError, match="num_layers=9 exceeds the model's 4 decoder layers"):
        apply_excitor(tiny_model(), ExcitorConfig(num_layers=9))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        apply_excitor(gpt2, CONFIG)
    with pytest.raises(ValueError, match="positive integer"):
        ExcitorConfig(rank=0)
    with pytest.raises(ValueError, match="visual_prompt_mode"):
        ExcitorConfig(visual_prompt_mode="prefix")
    with pytest.raises(ValueError, match="affinity_init_gain must be > 0"):
        ExcitorConfig(affinity_init_gain=0.0)
    x, tokens, has_image = torch.randn(2, 3, 64), torch.randn(2, 4, 64), torch.ones(2, dtype=torch.bool)
    for projection, values in (("separate_kv", None), ("shared", tokens)):
        block = excitor_blocks(apply_excitor(tiny_model(), replace(CONFIG, visual_prompt_mode="concat",
                                                                   visual_projection=projection)))[0]
        with pytest.raises(ValueError, match="separate value tokens are for visual_projection='separate_kv'"):
            block(x, VisualPrompts(tokens, has_image, values))
    with pytest.raises(ValueError, match="built language-only"):
        excitor_blocks(model)[0](x, VisualPrompts(tokens, has_image))


def test_config_json_round_trip_and_unknown_keys():
    config = ExcitorConfig(num_layers=7, gate_tanh=True, visual_prompt_mode="add", key_association="token")
    assert ExcitorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown ExcitorConfig keys \\['rnak'\\]"):
        ExcitorConfig.from_dict({"rnak": 3})
    # A config saved before the faithful variants existed is the shared, projected block.
    old = {k: v for k, v in config.to_dict().items() if k not in ("visual_projection", "extra_key")}
    assert ExcitorConfig.from_dict(old) == replace(config, visual_projection="shared", extra_key="projected")


@pytest.mark.parametrize("order", ["auto", "reference", "direct"])
def test_the_extra_key_is_rotated_with_its_token_and_cached(order, monkeypatch):
    """K' = W_k x + g * e (direct) or W_k x + g * W_k e (projected), e = softmax(W_up W_down x . P^T / sqrt(d)) . P,
    written out here, is what the KV cache holds after RoPE: the extra key is part of the key, rotated with its
    token's position, so the scores Q . K'^T see it at the same relative rotation as the frozen key."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = apply_excitor(tiny_model("llama-gqa"), with_order(order, monkeypatch))
    with torch.no_grad():
        for block in excitor_blocks(model):
            block.gate.copy_(torch.linspace(0.5, 1.5, block.num_kv_heads))
    attention = model.model.layers[-1].self_attn
    seen = {}
    attention.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    ids, mask = padded_batch("left")
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
        block, x = attention.k_proj, seen["hidden_states"]
        a = ((x @ block.down.weight.t() @ block.up.weight.t()) @ block.prompts.t() / block.prompts.shape[1] ** 0.5)
        extra = a.softmax(-1) @ block.prompts
        if order != "direct":
            extra = extra @ block.base.weight.t()
        keys = x @ block.base.weight.t() + block.gate.repeat_interleave(block.head_dim) * extra
        keys = keys.view(*x.shape[:2], block.num_kv_heads, block.head_dim).transpose(1, 2)
        cos, sin = seen["position_embeddings"]
        _, expected = apply_rotary_pos_emb(keys, keys, cos, sin)
    torch.testing.assert_close(cache.layers[-1].keys, expected, rtol=1e-5, atol=1e-5)
    assert block.prompts.shape[1] == (block.base.out_features if order == "direct" else block.base.in_features)
