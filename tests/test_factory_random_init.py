"""model.random_init_seed: an LM from its config.json alone, only when asked for, the same for the same seed."""
from __future__ import annotations

import pytest
import torch

from mm_excitor.factory import load_language_model
from tests.tiny_models import tiny_config, tiny_tokenizer


@pytest.fixture()
def config_only(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    return tmp_path


def state(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_a_missing_weights_file_is_an_error_unless_random_init_is_asked_for(config_only):
    with pytest.raises(OSError, match="model.safetensors|pytorch_model.bin"):
        load_language_model(config_only)
    model, tokenizer = load_language_model(config_only, "bfloat16", random_init_seed=3)
    assert model.config.hidden_size == tiny_config().hidden_size and tokenizer.pad_token == "<pad>"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and not model.training
    assert model.config._name_or_path == str(config_only)


def test_the_same_seed_gives_the_same_weights_and_leaves_the_global_rng_alone(config_only):
    torch.manual_seed(0)
    first = state(load_language_model(config_only, random_init_seed=3)[0])
    after_one = torch.rand(1)
    torch.manual_seed(0)
    again = state(load_language_model(config_only, random_init_seed=3)[0])
    assert torch.rand(1) == after_one  # the init draws from its own generator state
    other = state(load_language_model(config_only, random_init_seed=4)[0])
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.layers.0.self_attn.k_proj.weight"], other["model.layers.0.self_attn.k_proj.weight"])


def test_weights_in_the_directory_are_not_read_when_random_init_is_asked_for(config_only):
    saved, _ = load_language_model(config_only, random_init_seed=5)
    saved.save_pretrained(config_only)
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(),
                                                 load_language_model(config_only)[0].state_dict().values()))
    fresh = load_language_model(config_only, random_init_seed=6)[0]
    assert not torch.equal(fresh.model.embed_tokens.weight, saved.model.embed_tokens.weight)
