"""The probe's options scored against their question's shared prompt (one prompt pass, the KV cache repeated to
the options) give the scores of every option's full row: for the frozen LM and for every method's adapter with
non-zero (trained-like) weights, peft prefix-tuning included."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from eval import probe
from tests.delia.helpers import chat_tokenizer
from tests.eval.test_eval_probe import QUESTIONS
from tests.tiny_models import tiny_method_config, tiny_method_model, tiny_model

MORE = [
    {"id": "q4", "category": "shape", "question": "how many triangles are left of the big green square in the image ?",
     "options": ["one", "none at all", "two small ones", "four"], "answer": 1},
    {"id": "q5", "category": "colour", "question": "red ?", "options": ["no", "yes it is red"], "answer": 1},
]


def trained(method: str, config=None):
    """`method`'s tiny model with every trainable tensor moved off its initialisation (gates open, LoRA's B
    non-zero), so the adapter changes what the base computes."""
    model = tiny_method_model(method, base=tiny_model(seed=6), config=config)
    torch.manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5 * torch.randn_like(parameter))
    model.tokenizer = chat_tokenizer()
    return model


ADAPTED_TEXT = ("excitor", "excitor_reference", "lora", "llama_adapter", "text_prefix")
"""The methods that change text-only scores (the visual prefix only adds image tokens)."""
MODELS = {"frozen": lambda: probe.FrozenLanguageModel(tiny_model(seed=6).eval()),
          **{m: (lambda m=m: trained(m)) for m in ("excitor", "lora", "llama_adapter", "prefix", "text_prefix")},
          "excitor_reference": lambda: trained("excitor", reference_excitor())}


def reference_excitor():
    """The tiny config with the Excitor's reference forward (no fast path)."""
    config = tiny_method_config()
    return dataclasses.replace(config, excitor=dataclasses.replace(config.excitor, key_association="reference"))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("batch_size", [3, 32])
def test_shared_prompt_scores_equal_every_options_full_row(name, batch_size):
    model, tokenizer = MODELS[name](), chat_tokenizer()
    assert probe.prompt_sharing(model) is not None  # the shared path is the one under test
    questions = [*QUESTIONS, *MORE]
    shared = probe.option_log_likelihoods(model, tokenizer, questions, batch_size)
    full = probe.option_log_likelihoods(model, tokenizer, questions, batch_size, share_prompt=False)
    assert [len(s) for s in shared] == [len(q["options"]) for q in questions]
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    if name in ADAPTED_TEXT:  # the adapter really acts on the shared path
        base = probe.option_log_likelihoods(MODELS["frozen"](), tokenizer, questions, batch_size)
        assert max(abs(a - b) for ours, theirs in zip(shared, base) for a, b in zip(ours, theirs)) > 1e-4


def test_a_model_without_a_language_model_is_scored_by_full_rows():
    class Scorer:
        """Only the scoring call every method has."""

        def __init__(self, model):
            self.model = model
            self.device = torch.device("cpu")

        def label_log_likelihoods(self, **batch):
            return self.model.label_log_likelihoods(**batch)

    frozen = probe.FrozenLanguageModel(tiny_model(seed=6).eval())
    assert probe.prompt_sharing(Scorer(frozen)) is None
    tokenizer = chat_tokenizer()
    torch.testing.assert_close(probe.option_log_likelihoods(Scorer(frozen), tokenizer, QUESTIONS, 4),
                               probe.option_log_likelihoods(frozen, tokenizer, QUESTIONS, 4), rtol=1e-5, atol=1e-5)
