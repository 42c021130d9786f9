"""One process per device under torchrun: process-group setup, DDP/FSDP wrapping, and rank-0-only helpers.

Only the trainable tensors (a few million for Excitor) are ever communicated during training: DDP registers
gradient hooks on requires_grad parameters only, and FSDP reduce-scatters only gradients that exist.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn



@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK (nccl on CUDA, gloo on CPU).

    Without those variables (a plain `python train.py`) this is a single process. Idempotent: entry scripts call
    it first (to build a per-rank sampler), then the Trainer calls it again.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def cleanup_distributed() -> None:
    """Leave the process group together: a rank that tears gloo down while a peer still talks to it makes the
    peer abort ("terminate called without an active exception"). A barrier alone is not enough (a rank can leave it
    while its last message to a peer is still unread), so every rank also says through the rendezvous store, which is
    not a gloo connection, that it has left the barrier, and waits until all have."""
    if dist.is_initialized():
        dist.barrier()
        store, world_size = dist.distributed_c10d._get_default_store(), dist.get_world_size()
        left = store.add(_LEFT_BARRIER_KEY, 1)
        everyone = -(-left // world_size) * world_size  # this cleanup's count (a process may clean up more than once)
        while store.add(_LEFT_BARRIER_KEY, 0) < everyone:
            time.sleep(0.01)
        dist.destroy_process_group()


_LEFT_BARRIER_KEY = "mm_excitor/left_final_barrier"


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place sum/max over ranks (identity in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (small plain objects only)."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- wrapping ----------------------------------------------------------------------------------------------------

def default_find_unused(model: nn.Module) -> bool:
    """Whether DDP must search each step's graph for trainable tensors that got no gradient: what the method says
    (`ddp_find_unused_parameters`); a bare LM with Excitor blocks uses every trainable tensor in every forward."""
    return bool(getattr(model, "ddp_find_unused_parameters", False))


def wrap_model(model: nn.Module, mode: str, info: DistInfo, find_unused_parameters: bool | None = None) -> nn.Module:
    """The model as the training loop calls it: itself (one process), DDP, or FSDP2 (`fully_shard`)."""
    if not info.distributed:
        return model.to(info.device)
    if mode == "ddp":
        return _wrap_ddp(model, info, find_unused_parameters)
    if mode == "fsdp":
        return _wrap_fsdp(model, info)
    raise ValueError(f"unknown distributed mode {mode!r}")


def _wrap_ddp(model: nn.Module, info: DistInfo, find_unused: bool | None) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    model = model.to(info.device)
    # DDP's own start-up sync would broadcast the whole frozen base; rank 0's trainable tensors are all that can
    # differ between ranks (random prompt init), so broadcast those alone.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                dist.broadcast(parameter.data, src=0)
    # Buffers (rotary tables) are frozen and identical on every rank: no per-forward buffer broadcast.
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    buffers = {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}
    return DistributedDataParallel(
        model,
        device_ids=[info.local_rank] if info.device.type == "cuda" else None,
        find_unused_parameters=default_find_unused(model) if find_unused is None else find_unused,
        init_sync=False,
        **buffers,
    )


def _wrap_fsdp(model: nn.Module, info: DistInfo) -> nn.Module:
    """Shard the model with FSDP2 so that the frozen base is split over the ranks instead of replicated.

    Units, innermost first: the adapter's own units (its method's `fsdp_units` hook); each decoder layer (frozen);
    the root (frozen embeddings, final norm, head). FSDP2 keeps per-parameter DTensors, so frozen and trainable tensors never share
    a flat buffer and frozen ones get no gradient memory.
    """
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():  # as for DDP: ranks must start from rank 0's trainable init
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.to(info.device)
                dist.broadcast(parameter.data, src=0)
    from ..adapter_io import adapter_hooks

    for module in adapter_hooks(model).fsdp_units():
        fully_shard(module)
    for layer in _decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Transformer layers wherever the LM sits (a bare CausalLM, or inside a multimodal wrapper)."""
    return [
        layer
        for module in model.modules()
        if isinstance(module, nn.ModuleList)
        for layer in module
        if hasattr(layer, "self_attn")
    ]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place and has no wrapper)."""
    return getattr(model, "module", model) if _is_ddp(model) else model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Inside the block every rank holds the whole model and runs forwards on its own (no collectives), as
    generation needs: ranks generate different numbers of tokens and items. A no-op without FSDP.

    The inner units stop resharding after forward for the block (torch's documented way to run evals) and get
    their training setting back after it; the root unit never reshards after forward anyway."""
    from torch.distributed.fsdp import FSDPModule

    units = [module for module in model.modules() if isinstance(module, FSDPModule)]
    inner = [unit for unit in units if unit is not model]
    for unit in inner:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for unit in inner:
            unit.set_reshard_after_forward(True, recurse=False)


def _is_ddp(model: nn.Module) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce/reduce-scatter on non-final micro-steps of an accumulation window."""
    if enabled:
        if is_fsdp(model):
            model.set_requires_gradient_sync(True)
        yield
    elif _is_ddp(model):
        with model.no_sync():
            yield
    elif is_fsdp(model):
        model.set_requires_gradient_sync(False)
        yield
    else:
        yield


# --- full (unsharded) state for saving ---------------------------------------------------------------------------

def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU; for an FSDP-sharded DTensor this is a collective every rank must join."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu").clone()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the tensors the adapter saves (its method's `adapter_state` hook), by name; a collective
    under FSDP (call on all ranks)."""
    from ..adapter_io import adapter_hooks

    return {name: full_tensor(t) for name, t in adapter_hooks(unwrap(model)).adapter_state().items()}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, gathered to full tensors; call on all ranks."""
    from .state import optimizer_state_by_name

    if not is_fsdp(model):
        return optimizer_state_by_name(optimizer)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    return {
        "state": {n: {k: full_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()} for n, s in state["state"].items()},
        "param_groups": [{k: v for k, v in g.items()} for g in state["param_groups"]],
    }


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Inverse of optimizer_state; under FSDP each rank keeps its shard of the full tensors it is given."""
    from .state import load_optimizer_state_by_name

    if not is_fsdp(model):
        load_optimizer_state_by_name(optimizer, saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in saved["param_groups"]]
    set_optimizer_state_dict(
        model, optimizer, {"state": saved["state"], "param_groups": groups}, options=StateDictOptions(full_state_dict=True)
    )
