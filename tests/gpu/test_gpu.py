"""The CUDA paths of every method on the tiny models (skipped without a GPU; `bash bench/gpu.sh` runs them): bf16
exactness at init against the unmodified Hugging Face model with fused attention, a training step under bf16
autocast with fp32 adapters, cached == uncached greedy generation, and a resumed run equal to an uninterrupted one.
The CPU suite proves the same properties in fp32 (tests/test_methods.py, tests/train/test_train_resume.py)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import signal

import pytest
import torch

from mm_excitor.decoding import Decoding
from mm_excitor.methods import METHODS
from tests.method_inputs import EXACT_WITH_IMAGES, collator, items, perturb, text_only
from tests.tiny_models import tiny_method_model, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
ALL = sorted(METHODS)
ATTENTION = ["sdpa", "sdpa-flash", "flash_attention_2"]
"""Hugging Face's SDPA as torch picks its kernel; SDPA held to the flash kernel (unpadded rows: that kernel takes
no mask); the flash-attn package's kernel where it is installed."""


def attention_kernels(attn: str) -> contextlib.AbstractContextManager:
    if attn != "sdpa-flash":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def on_cuda(method: str, attn: str = "sdpa", dtype: torch.dtype = torch.bfloat16, trained: bool = False):
    """(base, model): the tiny LLaMA in `dtype` on the GPU and `method`'s model on a copy of it (fp32 adapters)."""
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("the flash-attn package is not installed")
    base = tiny_model("llama-gqa", "sdpa" if attn == "sdpa-flash" else attn).to(dtype)
    model = tiny_method_model(method, base)
    if trained:
        perturb(model, std=0.1)
    return base.to(CUDA), model.to(CUDA)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("method", ALL)
def test_bf16_at_init_is_the_unmodified_model_bit_for_bit(method, attn):
    base, model = on_cuda(method, attn)
    rows = items()[:1] if attn == "sdpa-flash" else items()
    for batch in (collator()(rows), collator().prompts(items(targets=False)[: len(rows)])):
        inputs = batch.to(CUDA).inputs
        with torch.no_grad(), attention_kernels(attn):
            expected = base(**text_only(inputs)).logits
            assert expected.dtype == torch.bfloat16
            assert torch.equal(model(**text_only(inputs)).logits, expected)
            if method in EXACT_WITH_IMAGES:
                assert torch.equal(model(**inputs).logits, expected)


@pytest.mark.parametrize("method", ALL)
def test_a_bf16_autocast_step_gives_every_fp32_adapter_tensor_a_finite_gradient(method):
    _, model = on_cuda(method, trained=True)
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**collator()(items()).to(CUDA).inputs).loss
    loss.backward()
    assert torch.isfinite(loss)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert all(p.dtype == torch.bfloat16 for p in model.language_model.parameters() if not p.requires_grad)
    for name, parameter in trainable.items():
        assert parameter.grad is not None and parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("method", ALL)
def test_cached_greedy_generation_equals_uncached(method):
    """In fp32: bf16 rounds the one-token steps of the cached path and the full-sequence steps of the uncached path
    differently, so only fp32 can ask for the same tokens."""
    _, model = on_cuda(method, dtype=torch.float32, trained=True)
    inputs = collator().prompts(items(targets=False)).to(CUDA).inputs
    decoding = Decoding(max_new_tokens=6)
    cached = model.generate(**inputs, decoding=decoding)
    model.language_model.generation_config.use_cache = False
    uncached = model.generate(**inputs, decoding=decoding)
    assert cached == uncached and any(cached)


@pytest.mark.parametrize("method", ALL)
def test_two_steps_saved_and_resumed_then_two_more_equal_four_straight_steps(method, tmp_path):
    """bf16 base, bf16 autocast, fp32 adapters. Eager attention: the fused kernels' backward may add in any order."""
    from mm_excitor.train import Trainer, TrainingInterrupted
    from tests.train.helpers import (
        TokenDataset, adapter_tensors, collate, make_config, make_method_model, make_sampler, read_metrics,
    )

    def train(output_dir, resume=None, stop_at=None):
        def stop(trainer, record):
            if record["step"] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)  # the trainer stops after this step, with a checkpoint

        model = make_method_model(method, base=tiny_model("llama-gqa", "eager").to(torch.bfloat16))
        config = make_config(output_dir, max_steps=4, warmup_steps=1, save_every_steps=2, blr=0.05, device="cuda",
                             precision="bf16")
        trainer = Trainer(model, TokenDataset(16, image_every=2), collate, make_sampler(16, seed=3), config,
                          callbacks=[stop])
        return trainer.fit(resume=resume)

    train(tmp_path / "straight")
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "resumed", stop_at=2)
    train(tmp_path / "resumed", resume="latest")
    losses = {run: {r["step"]: r["loss"] for r in read_metrics(tmp_path / run)} for run in ("straight", "resumed")}
    assert losses["resumed"] == losses["straight"] and len(losses["straight"]) == 4
    straight, resumed = (adapter_tensors(tmp_path / run / "checkpoints" / "step-4") for run in ("straight", "resumed"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
