"""Adapter-only checkpoints: the trainable tensors as safetensors plus a JSON config, as in peft.

A directory holds `adapter_model.safetensors` (every parameter with requires_grad, nothing frozen) and
`adapter_config.json` (the Excitor config and the identity of the model it was trained on). Loading refuses a
model whose identity differs and says which fields differ.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ExcitorConfig
from .io import atomic_directory
from .model import apply_excitor, decoder_layers, excitor_blocks

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_FORMAT = "mm_excitor.adapter/v1"
IDENTITY_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


def language_model_identity(model: nn.Module) -> dict[str, Any]:
    """What an adapter must match: the architecture, plus a fingerprint of a few frozen weights.

    The fingerprint hashes bf16-rounded samples of the input embedding and the first layer's key projection, so
    the same checkpoint in fp32, bf16 or fp16 agrees while a different checkpoint of one architecture does not.
    """
    config = model.config
    identity: dict[str, Any] = {field: getattr(config, field, None) for field in IDENTITY_FIELDS}
    identity["name_or_path"] = getattr(config, "_name_or_path", "") or ""
    identity["weights_fingerprint"] = _weights_fingerprint(model)
    return identity


def _weights_fingerprint(model: nn.Module) -> str | None:
    k_proj = decoder_layers(model)[0].self_attn.k_proj
    k_weight = getattr(k_proj, "base", k_proj).weight
    samples = [model.get_input_embeddings().weight, k_weight]
    if any(t.is_meta for t in samples):
        return None
    digest = hashlib.sha256()
    for tensor in samples:
        sample = tensor.detach().reshape(-1)[:4096].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def model_identity(model: nn.Module) -> dict[str, Any]:
    """Models that wrap an LM (the multimodal model) describe themselves with `adapter_identity()`."""
    describe = getattr(model, "adapter_identity", None)
    return describe() if callable(describe) else {"language_model": language_model_identity(model)}


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trains, selected by requires_grad rather than by a hand-written key list."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def adapter_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the trainable tensors: what generated outputs depend on besides the frozen base
    and the decoding settings, so resumable evaluation can refuse outputs made by other weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trainable_state_dict(model).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_adapter(model: nn.Module, directory: Path | str) -> Path:
    """Write the adapter atomically: a crash leaves the previous adapter (or nothing), never a torn one."""
    config = _excitor_config(model)
    state = {name: t.to("cpu").contiguous() for name, t in trainable_state_dict(model).items()}
    if not state:
        raise ValueError("the model has no trainable parameters to save")
    metadata = {
        "format": ADAPTER_FORMAT,
        "excitor": config.to_dict(),
        "identity": model_identity(model),
        "num_parameters": sum(t.numel() for t in state.values()),
    }
    directory = Path(directory)
    with atomic_directory(directory) as scratch:
        save_file(state, str(scratch / ADAPTER_WEIGHTS_NAME), metadata={"format": ADAPTER_FORMAT})
        (scratch / ADAPTER_CONFIG_NAME).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return directory


def read_adapter_config(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no adapter config at {path} (expected {ADAPTER_CONFIG_NAME} from save_adapter)")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not an mm_excitor adapter config (format={metadata.get('format')!r})")
    return metadata


def load_adapter(model: nn.Module, directory: Path | str, *, strict_identity: bool = True) -> nn.Module:
    """Load an adapter into `model`, adding the Excitor blocks first if the model has none.

    `strict_identity=False` accepts a base whose weight fingerprint differs (a different checkpoint of the same
    architecture); architecture differences are always refused.
    """
    directory = Path(directory)
    metadata = read_adapter_config(directory)
    weights_path = directory / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"no adapter weights at {weights_path}")
    saved_config = ExcitorConfig.from_dict(metadata["excitor"])
    if not excitor_blocks(model):
        apply_excitor(model, saved_config)
    differences = _differences(metadata["identity"], model_identity(model), strict_identity)
    current_config = _excitor_config(model).to_dict()
    differences += [
        f"excitor.{key}: adapter has {value!r}, model has {current_config.get(key)!r}"
        for key, value in saved_config.to_dict().items()
        if current_config.get(key) != value
    ]
    if differences:
        raise ValueError(f"adapter {directory} does not fit this model:\n  " + "\n  ".join(differences))
    state = load_file(str(weights_path))
    expected = trainable_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter {weights_path} keys do not match the model: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for name, tensor in expected.items():
            if tensor.shape != state[name].shape:
                raise ValueError(f"{name}: adapter shape {tuple(state[name].shape)} != model {tuple(tensor.shape)}")
            tensor.copy_(state[name])
    return model


def _excitor_config(model: nn.Module) -> ExcitorConfig:
    config = getattr(model, "excitor_config", None)
    if config is None:
        raise ValueError("the model has no Excitor blocks (call apply_excitor first)")
    return config


def _differences(saved: dict, current: dict, strict_identity: bool, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, strict_identity, prefix=f"{name}.")
        elif key == "name_or_path":
            continue  # informational: the same weights may live at another path
        elif key == "weights_fingerprint" and (not strict_identity or a is None or b is None):
            continue
        elif a != b:
            out.append(f"{name}: adapter was trained on {a!r}, this model has {b!r}")
    return out
