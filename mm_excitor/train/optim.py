"""AdamW over the trainable tensors, with the recipe's decay exemptions, and the learning-rate schedule.

The schedule is a pure function of the optimiser step, with no scheduler object: resuming at step k sets exactly
the rate an uninterrupted run would have used, and the resume state needs only k.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from .config import TrainConfig

_NO_DECAY_LEAF = re.compile(r"(^|_)(gate|gates|bias)($|_)")
_NORM_MODULE = re.compile(r"(norm|^ln($|_)|_ln$)")


def decays(name: str, parameter: torch.Tensor) -> bool:
    """Whether weight decay applies to the parameter called `name`.

    Every tensor with fewer than 2 dimensions is exempt: that covers biases, norm scales, Excitor's per-head gates
    and the visual offset. Higher-rank tensors are exempt when named like a gate or bias (LLaMA-Adapter keeps its
    gates as 1 x H x 1 x 1 tensors) or when they live in a norm module. Decaying a zero-initialised gate toward
    zero would fight the very signal that switches the adapter on, and norm scales are not weights to shrink.
    """
    if parameter.ndim < 2:
        return False
    *modules, leaf = name.split(".")
    if _NO_DECAY_LEAF.search(leaf):
        return False
    return not any(_NORM_MODULE.search(module.lower()) for module in modules)


def param_groups(named_parameters: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters, each remembering its parameters' names."""
    decay, no_decay = [], []
    for name, parameter in named_parameters:
        if parameter.requires_grad:
            (decay if decays(name, parameter) else no_decay).append((name, parameter))
    groups = []
    for members, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if members:
            groups.append(
                {"params": [p for _, p in members], "param_names": [n for n, _ in members], "weight_decay": wd}
            )
    if not groups:
        raise ValueError("the model has no trainable parameters (requires_grad=True): nothing to optimise")
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters; `model` is the unwrapped module, so names carry no wrapper prefix."""
    groups = param_groups(list(model.named_parameters()), config.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(config.betas), eps=config.eps)


def lr_at(step: int, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The rate for optimiser step `step` (0-based): linear warm-up to base_lr, then half-cycle cosine to min_lr.

    Warm-up reaches base_lr at step warmup_steps - 1 (the first step is base_lr / warmup_steps, not a wasted step at
    0); the cosine would reach min_lr at step total_steps, one past the last step, which therefore still learns.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
