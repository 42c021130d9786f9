"""What an adapter was trained on: the frozen language model's architecture and a fingerprint of its weights, and
how two such identities are compared (adapters, resumed runs and DELIA samples record them); and the fingerprint of
named tensors that identifies an adapter's weights or an encoder's."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .diff import Difference, differences
from .language_model import decoder_layers, key_projection

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
    k_weight = key_projection(decoder_layers(model)[0].self_attn).weight
    samples = [model.get_input_embeddings().weight, k_weight]
    if any(t.is_meta for t in samples):
        return None
    digest = hashlib.sha256()
    for tensor in samples:
        sample = tensor.detach().reshape(-1)[:4096].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                         strict_identity: bool = True) -> list[Difference]:
    """Fields of two model identities that differ; the LM's path is informational (the same weights may live
    elsewhere), and a missing weights fingerprint (a model on the meta device) or `strict_identity=False` skips
    the weights check."""
    def ignore(d: Difference) -> bool:
        leaf = d.key.rsplit(".", 1)[-1]
        return leaf == "name_or_path" or (leaf == "weights_fingerprint" and
                                          (not strict_identity or d.old is None or d.new is None))

    return differences(saved, current, ignore=ignore)


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 (16 hex digits) of named tensors (full, on any device): an adapter's (what generated outputs depend on
    besides the frozen base and the decoding settings, so resumable evaluation refuses outputs of other weights) or
    an encoder's (its identity)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
