"""Each method's adapter hooks (vision_language.AdapterHooks): what its checkpoints save is exactly its trainable
parameters, names and values, through safetensors and back; and what FSDP wraps as the adapter's units is what its
`fsdp_units` hook returns. The bare LM with Excitor blocks (language-only) is held to the same."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mm_excitor import ExcitorConfig, apply_excitor, load_adapter, save_adapter
from mm_excitor.adapter_io import ADAPTER_WEIGHTS_NAME, adapter_hooks
from mm_excitor.methods import METHODS
from mm_excitor.train import distributed
from tests.method_inputs import perturb
from tests.tiny_models import tiny_method_model, tiny_model

BARE_EXCITOR = "excitor (bare LM)"
KINDS = [*sorted(METHODS), BARE_EXCITOR]


def build(kind: str, seed: int = 1) -> torch.nn.Module:
    if kind == BARE_EXCITOR:
        torch.manual_seed(seed)
        return apply_excitor(tiny_model(), ExcitorConfig(num_layers=2, num_prompts=4, rank=4))
    return tiny_method_model(kind, seed=seed)


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", KINDS)
def test_the_saved_adapter_is_exactly_the_trainable_parameters(kind, tmp_path):
    model = perturb(build(kind))
    expected = trainable(model)
    assert expected and adapter_hooks(model).adapter_state().keys() == expected.keys()
    save_adapter(model, tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME))
    assert saved.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(saved[name], tensor), name
    fresh = build(kind, seed=2)
    assert any(not torch.equal(p, expected[n]) for n, p in trainable(fresh).items())
    load_adapter(fresh, tmp_path / "adapter")
    restored = trainable(fresh)
    assert restored.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(restored[name], tensor), name


def test_a_bare_language_model_takes_the_saved_excitor_blocks(tmp_path):
    model = perturb(build(BARE_EXCITOR))
    save_adapter(model, tmp_path / "adapter")
    restored = load_adapter(tiny_model(), tmp_path / "adapter")
    assert trainable(restored).keys() == trainable(model).keys()
    save_adapter(tiny_method_model("lora"), tmp_path / "lora")
    with pytest.raises(ValueError, match="'lora' adapter loads into its method's model"):
        load_adapter(tiny_model(), tmp_path / "lora")


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp_wraps_the_units_the_hook_names(kind, monkeypatch):
    """The adapter's units are sharded first and exactly as the hook lists them (here a hook that names one unit
    only), then the decoder layers, then the root."""
    from torch.distributed import fsdp

    model = build(kind)
    hooks = adapter_hooks(model)
    chosen = hooks.fsdp_units()[:1]
    assert chosen
    target = model if hooks is model else type(hooks)
    monkeypatch.setattr(target, "fsdp_units", lambda *args: chosen)
    sharded = []
    monkeypatch.setattr(fsdp, "fully_shard", sharded.append)
    monkeypatch.setattr(distributed.dist, "broadcast", lambda tensor, src: None)
    info = distributed.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    distributed.wrap_model(model, "fsdp", info)
    layers = [m for m in model.modules() if hasattr(m, "self_attn")]
    assert sharded[0] is chosen[0] and sharded[-1] is model
    assert sharded[1:-1] == layers
