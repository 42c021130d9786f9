"""Adapter-only checkpoints: the trainable tensors as safetensors plus a JSON config, as in peft.

A directory holds `adapter_model.safetensors` (every parameter with requires_grad, nothing frozen) and
`adapter_config.json`: the method's name and hyper-parameters and the identity of the model it was trained on.
Loading refuses another method, other hyper-parameters or another base model, and says which fields differ.

Two kinds of model carry adapters: a `VisionLanguageModel` of any method, and a bare Hugging Face causal LM that a
method adapted in place (the Excitor's `apply_excitor`, language-only). Either is read through its method's hooks
(`methods.adapter_of`): what the adapter records (`adapter_metadata`) and which tensors it saves (`adapter_state`).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .diff import MISSING, Difference, describe_all, differences
from .identity import identity_differences
from .integrity import verify_checksums, write_checksums
from .io import atomic_directory, atomic_write_json, read_json_document
from .methods import adapter_of, method_class
from .vision_language import AdapterHooks

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_FORMAT = "mm_excitor.adapter/v2"
def adapter_hooks(model: nn.Module) -> AdapterHooks:
    hooks = adapter_of(model)
    if hooks is None:
        raise ValueError("the model has no adapter (call apply_excitor, or build a method's model)")
    return hooks


def adapter_metadata(model: nn.Module) -> dict[str, Any]:
    """{"method", "config", "identity"}: what a checkpoint of `model`'s adapter records and must match."""
    return adapter_hooks(model).adapter_metadata()


def write_adapter(directory: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
    """Write the two adapter files into `directory` (a scratch directory that the caller renames into place)."""
    state = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    if not state:
        raise ValueError("the model has no trainable parameters to save")
    save_file(state, str(Path(directory) / ADAPTER_WEIGHTS_NAME), metadata={"format": ADAPTER_FORMAT})
    atomic_write_json(Path(directory) / ADAPTER_CONFIG_NAME,
                      {"format": ADAPTER_FORMAT, **metadata, "num_parameters": sum(t.numel() for t in state.values())},
                      sort_keys=True)


def save_adapter(model: nn.Module, directory: Path | str) -> Path:
    """Write the adapter atomically: a crash leaves the previous adapter (or nothing), never a torn one."""
    directory = Path(directory)
    hooks = adapter_hooks(model)
    with atomic_directory(directory) as scratch:
        write_adapter(scratch, hooks.adapter_state(), hooks.adapter_metadata())
        write_checksums(scratch)
    return directory


def read_adapter_config(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no adapter config at {path} (expected {ADAPTER_CONFIG_NAME} from save_adapter)")
    return read_json_document(path, ADAPTER_FORMAT, "an mm_excitor adapter config")


def adapter_config_differences(method: str, saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[Difference]:
    """The hyper-parameters of `method` that differ, under `config.`; the method's settings of how the arithmetic
    runs do not count (`non_adapter_fields`), and a field the saved config predates counts as the value it was
    trained with (`added_fields`)."""
    hooks = method_class(method)

    def ignore(d: Difference) -> bool:
        leaf = d.key.rsplit(".", 1)[-1]
        return leaf in hooks.non_adapter_fields or (d.old == MISSING and hooks.added_fields.get(leaf, MISSING) == d.new)

    return differences({"config": saved}, {"config": current}, ignore=ignore)


def check_adapter_fits(metadata: Mapping[str, Any], model: nn.Module, where: Path | str,
                       strict_identity: bool = True) -> None:
    """Refuse an adapter of another method, other hyper-parameters or another base model, listing what differs."""
    current = adapter_metadata(model)
    if metadata.get("method") != current["method"]:
        raise ValueError(f"{where} holds a {metadata.get('method')!r} adapter; this model uses the "
                         f"{current['method']!r} method")
    found = adapter_config_differences(current["method"], metadata.get("config", {}), current["config"])
    found += identity_differences(metadata.get("identity", {}), current["identity"], strict_identity)
    if found:
        raise ValueError(f"adapter {where} does not fit this model:" + describe_all(found, "adapter", "model"))


def load_adapter(model: nn.Module, directory: Path | str, *, strict_identity: bool = True) -> nn.Module:
    """Load an adapter into `model`; a bare Hugging Face LM is first adapted by the saved method (Excitor only).

    `strict_identity=False` accepts a base whose weight fingerprint differs (a different checkpoint of the same
    architecture); architecture differences are always refused. The two adapter files are checked against the
    directory's checksums first (integrity.py; directories written without checksums load unverified).
    """
    directory = Path(directory)
    verify_checksums(directory, [name for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)
                                 if (directory / name).exists()])
    metadata = read_adapter_config(directory)
    weights_path = directory / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"no adapter weights at {weights_path}")
    if adapter_of(model) is None:
        method_class(metadata.get("method")).adapt_language_model(model, metadata["config"])
    check_adapter_fits(metadata, model, directory, strict_identity)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({error})") from None
    expected = adapter_hooks(model).adapter_state()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter {weights_path} keys do not match the model: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for name, tensor in expected.items():
            if tensor.shape != state[name].shape:
                raise ValueError(f"{name}: adapter shape {tuple(state[name].shape)} != model {tuple(tensor.shape)}")
            tensor.copy_(state[name])
    return model

