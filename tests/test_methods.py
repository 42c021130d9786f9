"""Every adapter method (excitor, lora, llama_adapter, prefix, text_prefix) against the unmodified Hugging Face
model, through the same collator, checkpoints, Trainer and generation. The language-only text_prefix gets the same
properties on text-only batches, and is held to its reference formulation instead of exactness at init."""
from __future__ import annotations

import copy
import dataclasses
import os
import signal

import pytest
import torch

from mm_excitor import load_adapter, save_adapter
from mm_excitor.adapter_io import read_adapter_config
from mm_excitor.language_model import trainable_state_dict
from mm_excitor.factory import ModelConfig
from mm_excitor.decoding import Decoding
from mm_excitor.methods import METHODS
from mm_excitor.methods.llama_adapter import LlamaAdapterSettings, adaption_prompts, apply_adaption_prompts
from mm_excitor.methods.lora import LoraSettings
from mm_excitor.recipe import ConfigError, load_config
from mm_excitor.vision import VisionEncoder
from tests.method_inputs import EXACT_WITH_IMAGES, collator, items, perturb, text_only
from tests.tiny_models import (
    tiny_method_config, tiny_method_model, tiny_model, tiny_vision_config,
)

CONFIG = tiny_method_config()
ALL = sorted(METHODS)
MULTIMODAL = [method for method in ALL if METHODS[method].takes_images]
EXACT_AT_INIT = [method for method in ALL if method != "text_prefix"]
"""Methods that are the base model at init (zero gates, zero LoRA B, a prefix only on rows with an image).
Prefix-tuning is not: its random keys and values are attended from the first call (see its reference test)."""
EXCITOR_VARIANTS = {
    "excitor:separate_kv": dict(visual_projection="separate_kv"),
    "excitor:direct": dict(extra_key="direct"),
    "excitor:separate_kv+direct": dict(visual_projection="separate_kv", extra_key="direct"),
}
"""The Excitor's faithful variants (docs/design.md), tested as methods of their own next to the default."""
ALL_AND_VARIANTS = [*ALL, *EXCITOR_VARIANTS]
TRAINABLE = {
    "excitor": (".k_proj.", "projection."),
    "lora": (".lora_A.", ".lora_B.", "projector."),
    "llama_adapter": (".adaption_prompts.", "projection."),
    "prefix": ("projector.",),
    "text_prefix": (".prompt_encoder.",),
}


def build(method, base=None, vision=None, seed=1, config=CONFIG):
    """`method`'s tiny model; an EXCITOR_VARIANTS name builds the Excitor with that variant's settings."""
    if method in EXCITOR_VARIANTS:
        config = dataclasses.replace(config, excitor=dataclasses.replace(config.excitor, **EXCITOR_VARIANTS[method]))
    return tiny_method_model(method.split(":")[0], base, vision, seed, config)


def image_rows(method):
    """Which rows of `items()` carry an image for `method`: none for a language-only method."""
    return (True, False, True, True) if METHODS[method.split(":")[0]].takes_images else (False,) * 4


def text_logits(logits, mask):
    """The logits at each row's text positions (the prefix methods put N_v slots before each row's text)."""
    extra = logits.shape[1] - mask.shape[1]
    start = (mask.cumsum(1) == 0).sum(1)
    rows = []
    for row in range(mask.shape[0]):
        positions = torch.arange(mask.shape[1])
        positions = torch.where(positions >= start[row], positions + extra, positions)
        rows.append(logits[row, positions[mask[row].bool()]])
    return rows


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return VisionEncoder(tiny_vision_config(tmp_path_factory.mktemp("clip")))


# --- the base model at init -------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama-gqa", "llama-mha", "mistral", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", [*EXACT_AT_INIT, *EXCITOR_VARIANTS])
def test_at_init_text_is_the_unmodified_model_bit_for_bit(method, attn, family):
    """Zero gates (Excitor, LLaMA-Adapter) and zero LoRA B: logits equal the Hugging Face model's, for text-only
    calls on right- and left-padded batches, and, for the prompt methods, for rows with an image too."""
    base = tiny_model(family, attn)
    model = build(method, base)
    for batch in (collator()(items()), collator().prompts(items(targets=False))):
        with torch.no_grad():
            expected = base(**text_only(batch.inputs)).logits
            assert torch.equal(model(**text_only(batch.inputs)).logits, expected)
            if model.method in EXACT_WITH_IMAGES:
                assert torch.equal(model(**batch.inputs).logits, expected)


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("method", [*MULTIMODAL, *EXCITOR_VARIANTS])
def test_rows_without_an_image_are_the_text_only_model(method, trained):
    """In a batch with images, a row with has_image=False computes what a call without images computes (at init:
    the unmodified LM; trained: the image-blind control), while the images change the other rows."""
    model = build(method)
    if trained:
        perturb(model)
    for batch in (collator()(items()), collator().prompts(items(targets=False))):
        mask = batch.inputs["attention_mask"]
        swapped = dict(batch.inputs, visual_tokens=batch.inputs["visual_tokens"].flip(0))
        with torch.no_grad():
            mixed = text_logits(model(**batch.inputs).logits, mask)
            alone = text_logits(model(**text_only(batch.inputs)).logits, mask)
            other_images = text_logits(model(**swapped).logits, mask)
        torch.testing.assert_close(mixed[1], alone[1], rtol=1e-5, atol=1e-5)
        if trained or model.method not in EXACT_WITH_IMAGES:
            assert not torch.allclose(mixed[0], other_images[0]), "the image does not reach the text"


@pytest.mark.parametrize("method", ["excitor", "lora", "llama_adapter"])
def test_exactness_comes_from_the_zero_init_not_from_an_inactive_adapter(method):
    base = tiny_model()
    model = perturb(build(method, base))
    batch = collator()(items())
    with torch.no_grad():
        assert not torch.allclose(model(**text_only(batch.inputs)).logits, base(**text_only(batch.inputs)).logits)


def test_the_prefix_method_leaves_text_only_calls_untouched_after_training():
    base = tiny_model()
    model = perturb(build("prefix", base))
    batch = collator()(items())
    with torch.no_grad():
        assert torch.equal(model(**text_only(batch.inputs)).logits, base(**text_only(batch.inputs)).logits)


# --- each method against its reference formulation -------------------------------------------------------------

def official_adapter_attention(attention, hidden, cos, sin, prompts, gate):
    """LLaMA-Adapter's `Attention.forward` (OpenGVLab/LLaMA-Adapter, alpaca_finetuning_v1/llama/model.py), op by op
    on the Hugging Face layer's weights: adapter keys/values without RoPE concatenated before the sequence's, a
    softmax of their own scaled by tanh(gate) per head, one output projection; causal, no padding."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    batch, length, _ = hidden.shape
    heads, kv_heads, dim = attention.config.num_attention_heads, attention.config.num_key_value_heads, attention.head_dim

    def split(x, n):
        return x.view(batch, -1, n, dim).transpose(1, 2)

    xq, xk = apply_rotary_pos_emb(split(attention.q_proj(hidden), heads), split(attention.k_proj(hidden), kv_heads),
                                  cos, sin)
    xv = split(attention.v_proj(hidden), kv_heads)
    size = prompts.shape[1]
    keys = torch.cat([split(attention.k_proj(prompts), kv_heads), xk], 2).repeat_interleave(heads // kv_heads, 1)
    values = torch.cat([split(attention.v_proj(prompts), kv_heads), xv], 2).repeat_interleave(heads // kv_heads, 1)
    scores = torch.matmul(xq, keys.transpose(2, 3)) / dim ** 0.5
    causal = torch.full((length, length), float("-inf")).triu(1)
    scores = torch.cat([gate.tanh().view(1, -1, 1, 1) * scores[..., :size].float().softmax(-1),
                        (scores[..., size:] + causal).float().softmax(-1)], dim=-1)
    return attention.o_proj(torch.matmul(scores, values).transpose(1, 2).reshape(batch, length, -1))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_llama_adapter_computes_the_official_attention(attn):
    config = dataclasses.replace(CONFIG, llama_adapter=LlamaAdapterSettings(adapter_len=3, adapter_layers=1))
    model = perturb(build("llama_adapter", tiny_model("llama-gqa", attn), config=config))
    attention = model.language_model.model.layers[-1].self_attn
    seen = {}
    attention.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    attention.register_forward_hook(lambda m, args, output: seen.update(output=output[0]))
    ids = torch.randint(3, 90, (3, 7), generator=torch.Generator().manual_seed(0))
    tokens, has_image = torch.randn(3, 5, 8), torch.tensor([True, False, True])
    with torch.no_grad():
        model(ids, visual_tokens=tokens, has_image=has_image)
        visual = model.projection(tokens[:, :1]) * has_image[:, None, None]
        prompts = attention.adaption_prompts.prompts + visual  # P_l + I_p(b), nothing for a row without an image
        expected = official_adapter_attention(attention, seen["hidden_states"], *seen["position_embeddings"], prompts,
                                              attention.adaption_prompts.gate)
    torch.testing.assert_close(seen["output"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_the_prefix_is_the_projected_tokens_prepended_to_each_rows_text(padding):
    """ClipCap/LLaVA: each image row computes what the base LM computes on [projector(tokens) ; embed(text)] alone,
    whatever the batch's padding."""
    base = tiny_model()
    model = perturb(build("prefix", base))
    batch = collator()(items()) if padding == "right" else collator().prompts(items(targets=False))
    inputs = batch.inputs
    with torch.no_grad():
        logits = model(**inputs).logits
        for row in (0, 2, 3):
            real = inputs["attention_mask"][row].bool()
            embeds = base.get_input_embeddings()(inputs["input_ids"][row, real])
            joined = torch.cat([model.projector(inputs["visual_tokens"][row]), embeds])[None]
            expected = base(inputs_embeds=joined).logits[0]
            start = int((~real).sum()) if padding == "left" else 0
            torch.testing.assert_close(logits[row, start:start + len(expected)], expected, rtol=1e-5, atol=1e-5)


def test_prefix_layout_positions_and_labels():
    """Right padding: [prefix, text, pad]; left padding: [pad, prefix, prompt]. Positions count the attended slots
    (what `generate` derives from the mask); a masked prefix gives the text the positions it has alone; the first
    text token is no target (nothing before it predicts it in the text-only LM), so the collator's count holds."""
    from mm_excitor.methods.prefix import insert_prefix

    embeds = torch.arange(1.0, 9.0).view(2, 4, 1)
    prefix = -torch.arange(1.0, 5.0).view(2, 2, 1)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])
    labels = torch.tensor([[5, 6, 7, -100], [-100, -100, 8, 9]])
    out = insert_prefix(embeds, mask, prefix, torch.tensor([True, False]), labels)
    assert out["inputs_embeds"][..., 0].tolist() == [[-1, -2, 1, 2, 3, 4], [5, 6, -3, -4, 7, 8]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0], [0, 0, 0, 0, 0, 1]]
    assert out["labels"].tolist() == [[-100, -100, -100, 6, 7, -100], [-100, -100, -100, -100, -100, 9]]


LINEAR_LAYERS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize(("targets", "wrapped"), [
    (["q_proj", "v_proj"], {"q_proj", "v_proj"}),
    (["all-linear"], LINEAR_LAYERS),  # every decoder linear layer, not the output head
])
def test_lora_is_the_base_model_with_merged_low_rank_updates_on_its_targets(targets, wrapped, tmp_path):
    config = dataclasses.replace(CONFIG, lora=LoraSettings(r=4, target_modules=targets))
    base = tiny_model()
    batch = collator()(items())
    with torch.no_grad():
        assert torch.equal(build("lora", base, config=config)(**text_only(batch.inputs)).logits,
                           base(**text_only(batch.inputs)).logits)  # exact at init
    model = perturb(build("lora", base, config=config), std=0.05)  # all-linear moves every layer: keep fp32 close
    adapted = {name for name, module in model.language_model.named_modules() if hasattr(module, "lora_A")}
    assert {name.rsplit(".", 1)[-1] for name in adapted} == wrapped
    assert len(adapted) == len(wrapped) * base.config.num_hidden_layers
    merged = copy.deepcopy(base)
    scale = config.lora.alpha / config.lora.r
    with torch.no_grad():
        for name in adapted:
            lora = model.language_model.get_submodule(name)
            merged.get_submodule(name).weight += scale * lora.lora_B["default"].weight @ lora.lora_A["default"].weight
        torch.testing.assert_close(model(**text_only(batch.inputs)).logits, merged(**text_only(batch.inputs)).logits,
                                   rtol=1e-5, atol=1e-5)
    save_adapter(model, tmp_path)
    assert read_adapter_config(tmp_path)["config"]["lora"]["target_modules"] == targets


def prefix_cache(model, batch_size):
    """Li and Liang's prefix written out: layer l attends first to the virtual tokens' keys and values, slots 2l and
    2l + 1 of each virtual token's embedding row (KV heads x head dim each)."""
    from transformers import DynamicCache

    config = model.language_model.get_base_model().config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    rows = model.language_model.prompt_encoder["default"].embedding.weight
    per_layer = rows.view(rows.shape[0], config.num_hidden_layers, 2, heads, dim)
    cache = DynamicCache()
    for layer in range(config.num_hidden_layers):
        keys, values = (per_layer[:, layer, kind].permute(1, 0, 2)[None].expand(batch_size, -1, -1, -1)
                        for kind in (0, 1))
        cache.update(keys, values, layer)
    return cache


@pytest.mark.parametrize("family", ["llama-gqa", "llama-mha", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_text_prefix_is_the_base_model_attending_to_its_prefix_and_not_the_base_model_at_init(attn, family):
    """Prefix-tuning at init: the unmodified model given the prefix as its past keys and values (the text at the
    positions after it, whatever the padding), on right- and left-padded batches; unlike the zero-gated methods, not
    the base model."""
    base = tiny_model(family, attn)
    model = build("text_prefix", base)
    size = CONFIG.text_prefix.num_virtual_tokens
    for batch in (collator()(items(image_rows("text_prefix"))), collator().prompts(items((False,) * 4, targets=False))):
        inputs = text_only(batch.inputs)
        mask = inputs["attention_mask"]
        with torch.no_grad():
            logits = model(**inputs).logits
            expected = base(input_ids=inputs["input_ids"], past_key_values=prefix_cache(model, mask.shape[0]),
                            attention_mask=torch.cat([torch.ones(mask.shape[0], size, dtype=mask.dtype), mask], 1),
                            position_ids=(mask.cumsum(1) - 1).clamp(min=0) + size).logits
            assert not torch.allclose(logits, base(**inputs).logits)
        real = mask.bool()
        torch.testing.assert_close(logits[real], expected[real], rtol=1e-5, atol=1e-5)


def test_text_prefix_generation_is_its_uncached_greedy_decoding_whatever_the_batch():
    """peft's cached generation (the prefix as the cache's first entries) against greedy decoding by full forwards
    without a cache, stopped at EOS; an item's output does not depend on its batch, greedy or with beams."""
    model = perturb(build("text_prefix"), std=0.5)
    prompts = items((False,) * 4, targets=False)
    batch = collator().prompts(prompts)
    steps = 6
    generated = model.generate(**batch.inputs, decoding=Decoding(max_new_tokens=steps))
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    new = []
    with torch.no_grad():
        for _ in range(steps):
            token = model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
            new.append(token)
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    eos = model.tokenizer.eos_token_id
    uncached = []
    for row in torch.cat(new, 1).tolist():
        row = row[:row.index(eos)] if eos in row else row
        uncached.append(model.tokenizer.decode(row, skip_special_tokens=True).strip())
    assert generated == uncached and any(generated)
    for decoding in (Decoding(max_new_tokens=steps), Decoding(max_new_tokens=4, num_beams=2)):
        together = model.generate(**batch.inputs, decoding=decoding)
        assert together == [model.generate(**collator().prompts([item]).inputs, decoding=decoding)[0]
                            for item in prompts]


def test_a_language_only_method_refuses_rows_with_an_image_in_one_line():
    model = build("text_prefix")
    for batch in (collator()(items()), collator().prompts(items(targets=False))):
        with pytest.raises(ValueError, match=r"^the 'text_prefix' method is language-only: 3 of 4 rows have an image"):
            model(**batch.inputs)
    with pytest.raises(ValueError, match="language-only"):
        model.generate(**collator().prompts(items(targets=False)).inputs, decoding=Decoding(max_new_tokens=2))


# --- what trains -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ALL_AND_VARIANTS)
def test_only_the_adapter_trains_and_each_of_its_tensors_gets_a_gradient(method, encoder):
    model = build(method, vision=encoder)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(part in n for part in TRAINABLE[model.method]) for n in trainable), sorted(trainable)
    assert not any(p.requires_grad for p in model.vision.parameters())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = collator("image", (3, 32, 32))(items(image_rows(method), key="image", shape=(3, 32, 32)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    moved = set()
    model.train()
    for _ in range(2):  # zero gates / zero LoRA B leave some tensors without gradient until step 2
        optimizer.zero_grad()
        model(**batch.inputs).loss.backward()
        moved |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
        optimizer.step()
    assert moved == trainable, sorted(trainable - moved)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("method", ALL)
def test_a_text_only_batch_keeps_every_trainable_tensor_in_the_graph(method):
    """What `ddp_find_unused_parameters = False` promises: DDP would hang or fail on a trainable tensor without a
    gradient. Text-only rows still pass the collator's zero tokens (has_image False)."""
    model = build(method)
    assert model.ddp_find_unused_parameters is False
    batch = collator()(items(has_image=(False,) * 4))
    model.train()
    model(**batch.inputs).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


@pytest.mark.parametrize("method", ALL)
def test_the_loss_is_the_summed_label_loss_over_num_items_in_batch(method):
    """The Trainer's contract (HF's `num_items_in_batch`): the prefix changes no label count."""
    model = perturb(build(method))
    batch = collator()(items(image_rows(method)))
    with torch.no_grad():
        mean = model(**batch.inputs).loss
        summed = model(**batch.inputs, num_items_in_batch=1.0).loss
    assert batch.num_label_tokens > 0
    torch.testing.assert_close(summed, mean * batch.num_label_tokens, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ALL)
def test_label_log_likelihoods_are_each_rows_own_summed_label_log_probability(method):
    """The multiple-choice likelihood protocol's scores: row by row, minus the loss of that row alone (padding,
    the prefix's slots and the other rows change nothing)."""
    model = perturb(build(method)).eval()
    batch = collator()(items(image_rows(method)))
    scores = model.label_log_likelihoods(**batch.inputs)
    for row, item in enumerate(items(image_rows(method))):
        alone = collator()([item])
        with torch.no_grad():
            loss = model(**alone.inputs, num_items_in_batch=1.0).loss
        torch.testing.assert_close(scores[row], -loss, rtol=1e-4, atol=1e-4, msg=f"row {row}")


# --- checkpoints -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ALL)
def test_adapter_round_trip_and_a_checkpoint_of_another_method_is_refused(method, tmp_path):
    model = perturb(build(method, seed=1))
    save_adapter(model, tmp_path / "adapter")
    metadata = read_adapter_config(tmp_path / "adapter")
    assert metadata["method"] == method and metadata["config"] == model.adapter_config()
    assert metadata["num_parameters"] == sum(t.numel() for t in trainable_state_dict(model).values())
    batch = collator()(items(image_rows(method)))
    fresh = build(method, seed=2)
    with torch.no_grad():
        expected = model(**batch.inputs).logits
        assert not torch.equal(fresh(**batch.inputs).logits, expected)
        load_adapter(fresh, tmp_path / "adapter")
        assert torch.equal(fresh(**batch.inputs).logits, expected)
    other = ALL[(ALL.index(method) + 1) % len(ALL)]
    with pytest.raises(ValueError, match=f"holds a '{method}' adapter; this model uses the '{other}' method"):
        load_adapter(build(other), tmp_path / "adapter")


def test_lora_on_any_linear_layer_and_a_clear_error_for_a_missing_one(tmp_path):
    config = dataclasses.replace(CONFIG, lora=LoraSettings(r=2, target_modules=["q_proj", "k_proj", "o_proj",
                                                                                "down_proj"]))
    model = perturb(build("lora", config=config))
    assert any(".k_proj.lora_A." in n for n, _ in model.named_parameters())
    save_adapter(model, tmp_path)  # the LM's identity was taken before k_proj was wrapped
    load_adapter(build("lora", config=config, seed=3), tmp_path)
    with pytest.raises(ValueError, match=r"(?s)does not fit this model:.*config.lora.target_modules"):
        load_adapter(build("lora"), tmp_path)
    bad = dataclasses.replace(CONFIG, lora=LoraSettings(target_modules=["qkv_proj"]))
    with pytest.raises(ValueError, match=r"model.lora.target_modules \['qkv_proj'\]"):
        build("lora", config=bad)
    with pytest.raises(ValueError, match="'all-linear' stands alone"):
        LoraSettings(target_modules=["all-linear", "q_proj"])
    assert load_config(ModelConfig, None, ["lora.target_modules=[all-linear]"]).lora.peft_target_modules() == (
        "all-linear")


# --- training through the Trainer --------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lora", "llama_adapter", "text_prefix"])
def test_the_trainer_stops_and_resumes_exactly(method, tmp_path):
    from mm_excitor.train import Trainer, TrainingInterrupted
    from tests.train.helpers import TokenDataset, adapter_tensors, collate, make_config, make_sampler, read_metrics

    def train(output_dir, resume=None, stop_at=None):
        def stop(trainer, record):
            if record["step"] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)

        model = build(method, seed=1)
        image_every = 2 if METHODS[method].takes_images else 0
        trainer = Trainer(model, TokenDataset(12, image_every=image_every), collate, make_sampler(12, seed=3),
                          make_config(output_dir, max_steps=6, warmup_steps=1, save_every_steps=2, blr=0.05),
                          callbacks=[stop])
        return trainer.fit(resume=resume)

    def losses(output_dir):
        return {r["step"]: r["loss"] for r in read_metrics(output_dir)}

    train(tmp_path / "reference")
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "run", stop_at=3)
    train(tmp_path / "run", resume="latest")
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")
    reference, resumed = (adapter_tensors(tmp_path / d / "checkpoints" / "step-6") for d in ("reference", "run"))
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


# --- generation --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [*MULTIMODAL, *EXCITOR_VARIANTS])
def test_generation_with_images_does_not_depend_on_the_batch(method, encoder):
    model = perturb(build(method, vision=encoder), std=0.1)
    collate = collator("image", (3, 32, 32))
    batch_items = items(key="image", shape=(3, 32, 32), targets=False)
    for decoding in (Decoding(max_new_tokens=5), Decoding(max_new_tokens=4, num_beams=2)):
        together = model.generate(**collate.prompts(batch_items).inputs, decoding=decoding)
        alone = [model.generate(**collate.prompts([item]).inputs, decoding=decoding)[0] for item in batch_items]
        assert together == alone and any(together)
    # a row without its image answers as a call without images does (the image-blind control)
    greedy, prompts = Decoding(max_new_tokens=5), collate.prompts(batch_items)
    blind = model.generate(**text_only(prompts.inputs), decoding=greedy)
    assert model.generate(**prompts.inputs, decoding=greedy)[1] == blind[1]


@pytest.mark.parametrize("method", ALL)
def test_generate_tokens_are_what_generate_decodes(method):
    model = perturb(build(method), std=0.1)
    prompts = collator().prompts(items(image_rows(method), targets=False))
    decoding = Decoding(max_new_tokens=5)
    new = model.generate_tokens(**prompts.inputs, decoding=decoding)
    assert new.shape == (4, 5) or bool((new == model.tokenizer.eos_token_id).any())  # shorter only if all stopped
    texts = [text.strip() for text in model.tokenizer.batch_decode(new, skip_special_tokens=True)]
    assert texts == model.generate(**prompts.inputs, decoding=decoding)


def test_llama_adapter_projects_its_prompts_once_per_generate_call_and_never_reuses_stale_ones(monkeypatch):
    from mm_excitor.methods.llama_adapter import AdaptionPrompts

    calls = []
    original = AdaptionPrompts._keys_values
    monkeypatch.setattr(AdaptionPrompts, "_keys_values", lambda self, attention, visual: calls.append(1) or original(
        self, attention, visual))
    model = perturb(build("llama_adapter"), std=0.1)
    batch = collator().prompts(items(targets=False))
    model.generate(**batch.inputs, decoding=Decoding(max_new_tokens=6, min_new_tokens=6))
    assert len(calls) == CONFIG.llama_adapter.adapter_layers  # not once per layer and new token
    text = text_only(batch.inputs)  # the same prompt tensors in every call: only their version can tell
    with torch.no_grad():
        before = model(**text).logits
        for prompts in adaption_prompts(model.language_model):
            prompts.prompts.add_(1.0)  # what an optimiser step does between evaluations
        after = model(**text).logits
    assert not torch.equal(after, before)
    assert torch.equal(after, model(**text).logits.detach())  # grad enabled: computed afresh


# --- errors ------------------------------------------------------------------------------------------------------

def test_a_bad_method_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model.method 'lora2'; one of excitor, llama_adapter, lora, prefix, text_prefix"):
        ModelConfig(method="lora2")
    with pytest.raises(ConfigError, match="unknown model.method"):
        load_config(ModelConfig, None, ["method=adapter"])
    with pytest.raises(ConfigError, match="model.lora.r must be a positive integer"):
        load_config(ModelConfig, None, ["lora.r=0"])
    assert load_config(ModelConfig, None, ["lora.target_modules=[q_proj,k_proj]"]).lora.target_modules == [
        "q_proj", "k_proj"]


@pytest.mark.parametrize("method", ALL)
def test_a_model_without_an_encoder_refuses_images(method):
    model = build(method)
    batch = collator("image", (3, 32, 32))(items(key="image", shape=(3, 32, 32)))
    message = "built from a feature cache" if METHODS[method].takes_images else "language-only"
    with pytest.raises(ValueError, match=message):
        model(**batch.inputs)


def test_llama_adapter_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="adapter_layers=5 exceeds the model's 4 decoder layers"):
        apply_adaption_prompts(tiny_model(), LlamaAdapterSettings(adapter_layers=5))
    model = apply_adaption_prompts(tiny_model(), LlamaAdapterSettings(adapter_layers=1))
    assert len(adaption_prompts(model)) == 1
    with pytest.raises(ValueError, match="already has adaption prompts"):
        apply_adaption_prompts(model, LlamaAdapterSettings(adapter_layers=1))
    flex = tiny_model()
    flex.config._attn_implementation_internal = "flex_attention"
    with pytest.raises(ValueError, match="runs on attn_implementation eager or sdpa, not 'flex_attention'"):
        apply_adaption_prompts(flex, LlamaAdapterSettings(adapter_layers=1))


@pytest.mark.parametrize("method", ["excitor", "prefix"])
def test_greedy_output_ignores_the_model_generation_config_and_sets_no_sampling_flag(method, encoder):
    """Scores depend on the Decoding record alone: a generation_config.json's penalties and warpers change nothing,
    and greedy decoding passes no sampling-only flag (transformers warns that such a flag is not valid)."""
    model = perturb(build(method, vision=encoder), std=0.1)
    prompts = collator("image", (3, 32, 32)).prompts(items(key="image", shape=(3, 32, 32), targets=False))
    greedy = Decoding(max_new_tokens=5)
    plain = model.generate(**prompts.inputs, decoding=greedy)
    config = model.language_model.generation_config
    config.repetition_penalty, config.no_repeat_ngram_size, config.min_p, config.typical_p = 5.0, 1, 0.5, 0.2
    assert model.generate(**prompts.inputs, decoding=greedy) == plain
    kwargs = greedy.generate_kwargs(pad_token_id=0, eos_token_id=1)
    assert all(kwargs[name] is None for name in ("temperature", "top_p", "top_k", "min_p", "typical_p"))


# --- activation checkpointing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [*MULTIMODAL, *EXCITOR_VARIANTS])
def test_activation_checkpointing_with_images_gives_the_same_step(method):
    """The visual prompts are an argument of the call (mm_excitor/visual_prompts.py), so the layers that activation
    checkpointing replays in backward see them again: the same loss and gradients as without checkpointing, for
    every method that takes images. (text_prefix hands its prefix to the LM as the KV cache, which transformers'
    checkpointed layers drop: peft's prefix tuning does not train under activation checkpointing.)"""
    batch = collator()(items())

    def step(checkpointing: bool):
        model = perturb(build(method))
        if checkpointing:
            model.language_model.activation_checkpointing_enable()  # gradient_checkpointing_enable, renamed
            assert model.language_model.is_activation_checkpointing
        model.train()
        loss = model(**batch.inputs).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    (loss, grads), (checkpointed_loss, checkpointed_grads) = step(False), step(True)
    assert torch.equal(checkpointed_loss, loss)
    assert grads.keys() == checkpointed_grads.keys()
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_an_excitor_adapter_saved_before_the_variants_existed_loads_as_the_shared_projected_block(tmp_path):
    import json

    from mm_excitor.adapter_io import ADAPTER_CONFIG_NAME
    from mm_excitor.integrity import CHECKSUMS_NAME

    model = perturb(build("excitor"))
    save_adapter(model, tmp_path / "adapter")
    path = tmp_path / "adapter" / ADAPTER_CONFIG_NAME
    metadata = json.loads(path.read_text())
    for name in ("visual_projection", "extra_key"):
        del metadata["config"][name]
    path.write_text(json.dumps(metadata))
    (tmp_path / "adapter" / CHECKSUMS_NAME).unlink()  # adapters of that time had no checksum list either
    fresh = build("excitor", seed=2)
    load_adapter(fresh, tmp_path / "adapter")
    batch = collator()(items())
    with torch.no_grad():
        assert torch.equal(fresh(**batch.inputs).logits, model(**batch.inputs).logits)
    with pytest.raises(ValueError, match=r"config.visual_projection: adapter '<absent>', model 'separate_kv'"):
        load_adapter(build("excitor:separate_kv"), tmp_path / "adapter")


# --- distributed -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ALL_AND_VARIANTS)
def test_fsdp_units_hold_every_trainable_tensor_with_what_it_reads(method):
    """FSDP's units come from each method's `fsdp_units` hook: they cover every trainable tensor exactly once, never
    a decoder layer, and the Excitor's key projection is one unit with the frozen k_proj it reads."""
    from mm_excitor.methods.excitor.layer import ExcitorKeyProjection

    model = build(method)
    units = model.fsdp_units()
    covered = [id(p) for unit in units for p in unit.parameters() if p.requires_grad]
    assert sorted(covered) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert not any(hasattr(unit, "self_attn") for unit in units)
    blocks = [m for m in model.modules() if isinstance(m, ExcitorKeyProjection)]
    if model.method == "excitor":
        assert blocks and all(block in units for block in blocks)
