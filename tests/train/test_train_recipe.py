"""The config dataclasses, the YAML + dotted-override loader (OmegaConf structured configs), the parameter groups and
the LR schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
import yaml

from mm_excitor.recipe import ConfigError, from_dict, load_config, parse_args, to_dict, valid_keys
from mm_excitor.train import TrainConfig, decays, lr_at, param_groups
from tests.train.helpers import make_model


@dataclass
class ModelSection:
    name: str = "tiny"
    num_prompts: int = 30


@dataclass
class RunConfig:
    """A stand-in for the lead's top-level config: sections are nested dataclasses."""

    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    notes: str | None = None


def test_yaml_then_overrides_in_all_three_syntaxes(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  name: llama\ntrain:\n  blr: 1e-3\n  betas: [0.8, 0.9]\n  batch_size: 8\n")
    config = load_config(
        RunConfig, recipe, ["--train.batch_size", "2", "--train.clip_grad=1.5", "train.max_steps=10", "notes=null"]
    )
    assert config.model.name == "llama" and config.model.num_prompts == 30
    assert config.train.blr == 1e-3 and isinstance(config.train.blr, float)  # PyYAML reads 1e-3 as a string
    assert config.train.betas == (0.8, 0.9)
    assert config.train.batch_size == 2 and config.train.clip_grad == 1.5 and config.train.max_steps == 10
    assert config.notes is None
    assert parse_args(RunConfig, ["--config", str(recipe), "train.keep_last=none"]).train.keep_last is None
    assert load_config(RunConfig, None, ["--train.betas", "[0.5,0.6]"]).train.betas == (0.5, 0.6)
    # a dump loads back to the same config
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    assert load_config(RunConfig, dumped) == config
    assert from_dict(RunConfig, to_dict(config), ["train.batch_size=3"]).train.batch_size == 3  # a stored config

def test_unknown_keys_are_errors_that_list_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(RunConfig, None, ["--train.blrr", "1"])
    message = str(error.value)
    assert "train.blrr" in message and "did you mean 'train.blr'" in message and "batch_size" in message
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("trian:\n  blr: 1\n")
    with pytest.raises(ConfigError, match="'trian'.*valid keys at the top level: model, train, notes"):
        load_config(RunConfig, recipe)
    (tmp_path / "list.yaml").write_text("- a list\n")
    for message, recipe_path, overrides in [
        ("train.batch_size: Value 'two' .* could not be converted to Integer", None, ["train.batch_size=two"]),
        ("no recipe at", tmp_path / "missing.yaml", []),
        ("must be a YAML mapping", tmp_path / "list.yaml", []),
        ("precision must be one of", None, ["train.precision=fp8"]),
        ("unrecognised argument", None, ["stray"]),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(RunConfig, recipe_path, overrides)
    assert "train.blr" in valid_keys(RunConfig) and "model.name" in valid_keys(RunConfig)


def test_learning_rate_scales_with_the_effective_batch_and_schedule_lengths():
    config = TrainConfig(blr=9e-3, batch_size=4, grad_accum_steps=2, epochs=5, warmup_epochs=2)
    assert config.effective_batch(world_size=8) == 64
    assert config.learning_rate(world_size=8) == pytest.approx(9e-3 * 64 / 256)
    assert TrainConfig(lr=1e-4).learning_rate(world_size=8) == 1e-4
    assert config.schedule_lengths(micro_batches_per_epoch=10) == (25, 10)  # 5 steps/epoch
    assert TrainConfig(max_steps=7, warmup_steps=3).schedule_lengths(10) == (7, 3)


def test_lr_schedule_warms_up_linearly_then_follows_a_half_cosine():
    kw = dict(base_lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, **kw) == 1.0 and lr_at(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down
    assert lr_at(14, **kw) == pytest.approx(0.1) and lr_at(13, **kw) > 0.1  # the last step still learns
    values = [lr_at(s, **kw) for s in range(4, 14)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert lr_at(0, base_lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=1) == 1.0
    assert math.isclose(lr_at(3, base_lr=2.0, min_lr=0.0, warmup_steps=0, total_steps=5), 2.0 * 0.5 * (1 + math.cos(math.pi * 3 / 5)))


def test_no_weight_decay_on_gates_norms_biases_and_1d_tensors():
    model = make_model()
    groups = param_groups(list(model.named_parameters()), weight_decay=0.02)
    by_decay = {g["weight_decay"]: set(g["param_names"]) for g in groups}
    assert all(n.endswith((".prompts", ".down.weight", ".up.weight")) for n in by_decay[0.02])
    assert by_decay[0.0] and all(n.endswith(".gate") for n in by_decay[0.0])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert by_decay[0.02] | by_decay[0.0] == trainable  # frozen tensors are not optimised
    matrix = torch.zeros(2, 2)
    assert not decays("adapter.gate", torch.zeros(1, 4, 1, 1))  # LLaMA-Adapter's 4-d gate
    assert not decays("vision.ln_post.weight", matrix) and not decays("model.norm.weight", matrix)
    assert not decays("proj.bias", matrix) and not decays("proj.bias", torch.zeros(3))
    assert decays("model.layers.0.mlp.gate_proj.weight", matrix)  # a gate *projection* is a matrix
    assert decays("visual_proj.weight", matrix)


def test_every_shipped_recipe_loads_into_its_task_run_config():
    from pathlib import Path

    from tasks import get_task

    root = Path(__file__).resolve().parents[2] / "configs"
    kinds = {"demo": "caption", "coco_llama7b": "caption", "scienceqa_llama7b": "scienceqa",
             "shapes_scienceqa": "scienceqa", "shapes_json": "shapes_json", "gpu_llama7b_shapes": "caption",
             "instruct_alpaca": "instruct", "instruct_shapes_llava": "instruct", "compare_instruct": "instruct"}
    assert {path.stem for path in root.glob("*.yaml")} == set(kinds), "a new recipe needs its task here"
    for name, task in kinds.items():
        config = load_config(get_task(task).config_class, root / f"{name}.yaml")
        assert config.model.excitor.visual_prompt_mode == "concat", name
