"""Reuse of prompt-side work across decoding steps.

Decoding calls every adapted layer once per new token with the same prompts; what a layer derives from its prompts
alone (their keys and values through the frozen projections) is then the same at every step. An `InferenceMemo`
keeps that value while no gradient is recorded and the tensors it came from are the same objects, unmodified and on
the same device, under the same autocast state; in training it recomputes every call, so autograd sees every use.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


class InferenceMemo(Generic[T]):
    def __init__(self) -> None:
        self._entry: tuple[tuple, T, tuple] | None = None

    def get(self, tensors: Sequence[torch.Tensor | None], compute: Callable[[], T]) -> T:
        """`compute()`, or its value from an earlier call with the same `tensors` (the inputs it depends on)."""
        if torch.is_grad_enabled():
            self._entry = None
            return compute()
        device = next(t.device.type for t in tensors if t is not None)
        autocast = torch.is_autocast_enabled(device)
        key = (
            tuple(id(t) for t in tensors),
            tuple(None if t is None else (t._version, t.device, t.dtype) for t in tensors),
            torch.get_autocast_dtype(device) if autocast else None,
        )
        if self._entry is None or self._entry[0] != key:
            # the tensors are held with the value, so that their ids cannot be reused while the entry lives
            self._entry = (key, compute(), tuple(tensors))
        return self._entry[1]

    def clear(self) -> None:
        """Drop the value (and the tensors it holds), e.g. when training starts."""
        self._entry = None
