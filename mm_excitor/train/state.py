"""The resume state: everything besides the adapter that an exact continuation needs, in plain formats.

Two files, each written atomically: `optimizer.safetensors` (optimizer moment tensors, keyed by parameter name,
plus each rank's torch RNG state as uint8 tensors) and `trainer_state.json` (step, epoch, data position, per-rank
Python/NumPy RNG states, optimiser hyper-parameters, GradScaler state, the run config, the adapter's method and
model identity, and the training data's identity). No pickle anywhere: the files load under `weights_only` rules
and outlive the classes that wrote them.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..io import atomic_write_bytes, atomic_write_json, read_json_document

STATE_FORMAT = "mm_excitor.train_state/v2"
STATE_JSON = "trainer_state.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
_SEP = "::"  # parameter names contain dots, never this


@dataclass
class ResumeState:
    """One checkpoint's resume state; `optimizer` is {"state": {name: {key: value}}, "param_groups": [...]}."""

    step: int
    epoch: int
    consumed_in_epoch: int
    """Indices taken from the sampler since `sampler_states` was recorded (whole micro-batches)."""
    sampler_states: list[Any]
    """Per rank: the sampler's state_dict() when its current epoch iterator started."""
    rng_states: list[dict[str, Any]]
    """Per rank: see capture_rng()."""
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    world_size: int
    run_config: dict[str, Any]
    """The whole run config as plain data (its `train` section is the TrainConfig)."""
    model: dict[str, Any]
    """The adapter's method, hyper-parameters and model identity (adapter_io.adapter_metadata)."""
    data: dict[str, Any] = field(default_factory=dict)
    """The training data's identity (e.g. its size and a fingerprint), from the task that built it."""
    counters: dict[str, Any] = field(default_factory=dict)
    """samples_seen, tokens_seen, train_time_s, best_val_loss, best_step: run totals carried across resumes."""
    schedule: dict[str, Any] = field(default_factory=dict)
    """The learning-rate schedule's parameters when the checkpoint was written (informational)."""


def write_resume_state(directory: Path, state: ResumeState) -> None:
    """Write the two resume files into `directory` (the tensors first, the JSON that names them last)."""
    tensors: dict[str, torch.Tensor] = {}
    json_optimizer_state: dict[str, dict[str, Any]] = {}
    for name, values in state.optimizer["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer{_SEP}{name}{_SEP}{key}"] = value.detach().to("cpu").contiguous()
            else:
                json_optimizer_state.setdefault(name, {})[key] = value
    rng_json = []
    for rank, rng in enumerate(state.rng_states):
        tensors[f"rng{_SEP}{rank}{_SEP}torch"] = rng["torch"]
        for i, cuda_state in enumerate(rng.get("cuda", [])):
            tensors[f"rng{_SEP}{rank}{_SEP}cuda{_SEP}{i}"] = cuda_state
        rng_json.append({"python": rng["python"], "numpy": rng["numpy"], "num_cuda": len(rng.get("cuda", []))})
    atomic_write_bytes(directory / OPTIMIZER_TENSORS, save(tensors, metadata={"format": STATE_FORMAT}))
    document = {
        "format": STATE_FORMAT,
        "step": state.step,
        "epoch": state.epoch,
        "consumed_in_epoch": state.consumed_in_epoch,
        "sampler_states": state.sampler_states,
        "rng_states": rng_json,
        "optimizer": {"param_groups": state.optimizer["param_groups"], "non_tensor_state": json_optimizer_state},
        "scaler": state.scaler,
        "world_size": state.world_size,
        "run_config": state.run_config,
        "model": state.model,
        "data": state.data,
        "counters": state.counters,
        "schedule": state.schedule,
    }
    atomic_write_json(directory / STATE_JSON, document)


def read_resume_state(directory: Path | str) -> ResumeState:
    directory = Path(directory)
    path = directory / STATE_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a training checkpoint: {STATE_JSON} is missing")
    document = read_json_document(path, STATE_FORMAT, "a resume state")
    try:
        tensors = load_file(str(directory / OPTIMIZER_TENSORS))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{directory / OPTIMIZER_TENSORS}: unreadable resume state ({error})") from None
    optimizer_state: dict[str, dict[str, Any]] = {
        name: dict(values) for name, values in document["optimizer"]["non_tensor_state"].items()
    }
    for key, tensor in tensors.items():
        kind, *rest = key.split(_SEP)
        if kind == "optimizer":
            name, slot = rest
            optimizer_state.setdefault(name, {})[slot] = tensor
    rng_states = []
    for rank, rng in enumerate(document["rng_states"]):
        rng_states.append(
            {
                "python": rng["python"],
                "numpy": rng["numpy"],
                "torch": tensors[f"rng{_SEP}{rank}{_SEP}torch"],
                "cuda": [tensors[f"rng{_SEP}{rank}{_SEP}cuda{_SEP}{i}"] for i in range(rng["num_cuda"])],
            }
        )
    return ResumeState(
        step=document["step"],
        epoch=document["epoch"],
        consumed_in_epoch=document["consumed_in_epoch"],
        sampler_states=document["sampler_states"],
        rng_states=rng_states,
        optimizer={"state": optimizer_state, "param_groups": document["optimizer"]["param_groups"]},
        scaler=document["scaler"],
        world_size=document["world_size"],
        run_config=document["run_config"],
        model=document["model"],
        data=document.get("data", {}),
        counters=document.get("counters", {}),
        schedule=document.get("schedule", {}),
    )


# --- optimizer state keyed by parameter name -------------------------------------------------------------------

def optimizer_state_by_name(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with integer parameter ids replaced by names (groups carry `param_names`)."""
    state = optimizer.state_dict()
    names: dict[int, str] = {}
    groups = []
    for group, live_group in zip(state["param_groups"], optimizer.param_groups):
        group_names = live_group["param_names"]
        names.update(zip(group["params"], group_names))
        groups.append({**_plain(group), "params": list(group_names)})
    return {"state": {names[i]: values for i, values in state["state"].items()}, "param_groups": groups}


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Inverse of optimizer_state_by_name; refuses a checkpoint whose parameter groups hold other parameters."""
    current = optimizer.state_dict()
    if len(current["param_groups"]) != len(saved["param_groups"]):
        raise ValueError(
            f"the checkpoint's optimizer has {len(saved['param_groups'])} parameter groups, this run has "
            f"{len(current['param_groups'])}"
        )
    ids: dict[str, int] = {}
    groups = []
    for group, live_group, saved_group in zip(current["param_groups"], optimizer.param_groups, saved["param_groups"]):
        if list(live_group["param_names"]) != list(saved_group["params"]):
            missing = sorted(set(saved_group["params"]) - set(live_group["param_names"]))
            extra = sorted(set(live_group["param_names"]) - set(saved_group["params"]))
            raise ValueError(f"optimizer parameters differ from the checkpoint: only in checkpoint {missing}, only here {extra}")
        ids.update(zip(live_group["param_names"], group["params"]))
        restored = {k: (tuple(v) if k == "betas" else v) for k, v in saved_group.items()}
        groups.append({**restored, "params": group["params"]})
    unknown = sorted(set(saved["state"]) - set(ids))
    if unknown:
        raise ValueError(f"optimizer state for unknown parameters {unknown}")
    optimizer.load_state_dict({"state": {ids[n]: v for n, v in saved["state"].items()}, "param_groups": groups})


def _plain(value: Any) -> Any:
    """JSON-able copy of optimiser hyper-parameters (tuples become lists, 0-d tensors numbers)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


# --- random number generators ------------------------------------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as plain data and uint8 tensors."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (evaluation, sampling) without moving the training run's random streams."""
    saved = capture_rng()
    try:
        yield
    finally:
        restore_rng(saved)
