"""Adapter-only checkpoints: round trip, contents, and refusal of a model they were not trained on."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mm_excitor import ExcitorConfig, apply_excitor, excitor_blocks, load_adapter, save_adapter
from mm_excitor.adapter_io import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from tests.tiny_models import tiny_model

CONFIG = ExcitorConfig(num_layers=2, num_prompts=4, rank=4)


def trained_adapter():
    model = apply_excitor(tiny_model(), CONFIG)
    with torch.no_grad():
        for block in excitor_blocks(model):
            block.gate.normal_()
    return model


def logits(model):
    ids = torch.arange(3, 15).reshape(2, 6)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_round_trip_into_a_fresh_base_model(tmp_path):
    model = trained_adapter()
    save_adapter(model, tmp_path / "adapter")
    restored = load_adapter(tiny_model(), tmp_path / "adapter")  # adds the blocks from the saved config
    assert restored.excitor_config == CONFIG
    assert torch.equal(logits(restored), logits(model))
    assert not torch.equal(logits(restored), logits(tiny_model()))


def test_checkpoint_holds_only_trainable_tensors(tmp_path):
    model = trained_adapter()
    save_adapter(model, tmp_path)
    state = load_file(str(tmp_path / ADAPTER_WEIGHTS_NAME))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    assert sum(t.numel() for t in state.values()) == 2 * (4 * 64 + 2 * 64 * 4 + 2)
    metadata = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert metadata["method"] == "excitor" and metadata["config"] == CONFIG.to_dict()
    assert metadata["identity"]["language_model"]["model_type"] == "llama"


def test_loading_onto_another_architecture_says_what_differs(tmp_path):
    save_adapter(trained_adapter(), tmp_path)
    with pytest.raises(ValueError, match=r"language_model.hidden_size: adapter 64, model 32"):
        load_adapter(tiny_model(hidden_size=32), tmp_path)
    with pytest.raises(ValueError, match=r"language_model.model_type: adapter 'llama', model 'qwen2'"):
        load_adapter(tiny_model("qwen2"), tmp_path)


def test_loading_onto_other_weights_of_the_same_architecture_is_refused_unless_asked(tmp_path):
    save_adapter(trained_adapter(), tmp_path)
    with pytest.raises(ValueError, match="weights_fingerprint"):
        load_adapter(tiny_model(seed=1), tmp_path)
    load_adapter(tiny_model(seed=1), tmp_path, strict_identity=False)


def test_fingerprint_is_stable_across_dtypes(tmp_path):
    save_adapter(trained_adapter(), tmp_path)
    load_adapter(tiny_model().to(torch.bfloat16), tmp_path)


def test_mismatched_excitor_config_and_missing_files(tmp_path):
    save_adapter(trained_adapter(), tmp_path / "a")
    other = apply_excitor(tiny_model(), ExcitorConfig(num_layers=2, num_prompts=6, rank=4))
    with pytest.raises(ValueError, match="config.num_prompts: adapter 4, model 6"):
        load_adapter(other, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG_NAME):
        load_adapter(tiny_model(), tmp_path / "missing")
    (tmp_path / "a" / ADAPTER_WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=ADAPTER_WEIGHTS_NAME):
        load_adapter(tiny_model(), tmp_path / "a")


def test_a_failed_save_leaves_the_previous_adapter_intact(tmp_path, monkeypatch):
    first = trained_adapter()
    save_adapter(first, tmp_path / "ckpt")
    import mm_excitor.adapter_io as checkpoint

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(trained_adapter(), tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert torch.equal(logits(load_adapter(tiny_model(), tmp_path / "ckpt")), logits(first))


def test_adapter_fingerprint_follows_the_trainable_weights_only(tmp_path):
    from mm_excitor.identity import state_fingerprint
    from mm_excitor.language_model import trainable_state_dict

    def adapter_fingerprint(model):
        return state_fingerprint(trainable_state_dict(model))

    model = trained_adapter()
    before = adapter_fingerprint(model)
    save_adapter(model, tmp_path)
    assert adapter_fingerprint(load_adapter(tiny_model(), tmp_path)) == before
    with torch.no_grad():
        excitor_blocks(model)[0].gate.add_(1.0)
    assert adapter_fingerprint(model) != before


@pytest.mark.parametrize("setting", [{"key_association": "token"}, {"prompt_init_std": 0.5},
                                     {"affinity_init_gain": 1 / 3}])
def test_how_the_arithmetic_runs_or_starts_is_not_part_of_the_adapter(tmp_path, setting):
    """key_association only chooses how W_k is applied and the init settings only where training started: an adapter
    made with other values loads, and its tensors replace the model's."""
    from dataclasses import replace

    (name, value), = setting.items()
    saved = apply_excitor(tiny_model(), replace(CONFIG, **{name: value}))
    save_adapter(saved, tmp_path / "a")
    model = load_adapter(apply_excitor(tiny_model(), CONFIG), tmp_path / "a")
    assert getattr(model.excitor_config, name) == getattr(CONFIG, name)
    assert torch.equal(excitor_blocks(model)[0].up.weight, excitor_blocks(saved)[0].up.weight)


def test_load_adapter_checks_the_files_against_their_checksums(tmp_path):
    """A byte flipped on disk still parses as safetensors; only the checksums written with the adapter tell."""
    model = trained_adapter()
    save_adapter(model, tmp_path / "a")
    assert json.loads((tmp_path / "a/checksums.json").read_text())["files"].keys() == {ADAPTER_CONFIG_NAME,
                                                                                      ADAPTER_WEIGHTS_NAME}
    weights = tmp_path / "a" / ADAPTER_WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's values
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{ADAPTER_WEIGHTS_NAME}: sha256 differs"):
        load_adapter(tiny_model(), tmp_path / "a")
    weights.write_bytes(bytes(data[:100]))
    with pytest.raises(ValueError, match=f"{ADAPTER_WEIGHTS_NAME}: 100 bytes, the checkpoint recorded"):
        load_adapter(tiny_model(), tmp_path / "a")


def test_an_adapter_without_checksums_loads_unverified(tmp_path):
    model = trained_adapter()
    save_adapter(model, tmp_path / "a")
    (tmp_path / "a/checksums.json").unlink()  # as written before checksums existed
    assert torch.equal(logits(load_adapter(tiny_model(), tmp_path / "a")), logits(model))
