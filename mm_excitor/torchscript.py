"""The weights of a TorchScript archive (OpenAI's original CLIP ``ViT-L-14.pt``), read without executing it.

``torch.load(weights_only=True)`` refuses TorchScript archives and ``torch.jit.load`` compiles and runs the code they
carry, so neither is acceptable for a downloaded file. An archive is a zip: ``<name>/data.pkl`` pickles the module
tree (objects of ``__torch__.*`` classes whose state holds tensors and submodules), the tensors' bytes are the
records ``<name>/data/<key>``, and ``<name>/code/__torch__/...py`` declares each class's ``__parameters__`` and
``__buffers__``. This module unpickles ``data.pkl`` with an allow-list (unknown globals are refused, ``__torch__``
classes become inert records), reads the two declarations with ``ast`` (parsed, never run) and returns exactly
``ScriptModule.state_dict()``.
"""

from __future__ import annotations

import ast
import io
import pickle
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

_DTYPES = {f"torch.{name}Storage": dtype for name, dtype in [
    ("Float", torch.float32), ("Double", torch.float64), ("Half", torch.float16), ("BFloat16", torch.bfloat16),
    ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16), ("Char", torch.int8),
    ("Byte", torch.uint8), ("Bool", torch.bool)]}


class TorchScriptArchiveError(ValueError):
    """An archive whose weights cannot be read safely; the message names the file."""


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a zip with a ``<name>/constants.pkl`` record, the mark of a TorchScript archive (as torch checks)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in archive.namelist())


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.jit.load(path).state_dict()``, on CPU, without running anything from the archive."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        prefix = next((n[: -len("data.pkl")] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")), None)
        if prefix is None:
            raise TorchScriptArchiveError(f"{path}: no <name>/data.pkl record: not a TorchScript archive this "
                                          "reader knows")
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").decode().strip() != sys.byteorder:
            raise TorchScriptArchiveError(f"{path}: tensors are stored {archive.read(prefix + 'byteorder')!r}-endian, "
                                          f"this machine is {sys.byteorder}-endian")
        root = _Unpickler(archive, prefix, path).load()
        declared = _Declarations(archive, prefix, path)
        state: dict[str, torch.Tensor] = {}
        _collect(root, "", declared, state, path)
    return state


class _ScriptObject:
    """An inert stand-in for an object of a ``__torch__`` class: it only keeps the pickled state."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Unpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(archive.read(f"{prefix}data.pkl")))
        self._archive, self._prefix, self._path = archive, prefix, path
        self._classes: dict[str, type] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if module == "__torch__" or module.startswith("__torch__."):
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self._classes[qualified]
        allowed = {"torch._utils._rebuild_tensor_v2": _rebuild_tensor, "collections.OrderedDict": OrderedDict,
                   "torch.jit._pickle.restore_type_tag": _restore_type_tag, **_DTYPES}
        if qualified not in allowed:
            raise TorchScriptArchiveError(f"{self._path}: data.pkl refers to {qualified}, which a weights-only "
                                          "reader does not load (nothing from the archive is executed)")
        return allowed[qualified]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise TorchScriptArchiveError(f"{self._path}: unexpected persistent id {pid!r} in data.pkl")
        _, dtype, key, _location, numel = pid
        if key not in self._storages:
            record = f"{self._prefix}data/{key}"
            try:
                raw = bytearray(self._archive.read(record))
            except KeyError:
                raise TorchScriptArchiveError(f"{self._path}: tensor record {record} is missing") from None
            storage = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if storage.numel() != numel:
                raise TorchScriptArchiveError(f"{self._path}: {record} holds {storage.numel()} elements, "
                                              f"data.pkl says {numel}")
            self._storages[key] = storage
        return self._storages[key]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, requires_grad: bool = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    return storage.as_strided(size, stride, offset)


def _restore_type_tag(value: Any, type_str: str) -> Any:
    return value


class _Declarations:
    """``__parameters__`` and ``__buffers__`` of each ``__torch__`` class, from the archive's code (parsed only)."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        self._archive, self._prefix, self._path = archive, prefix, path
        self._modules: dict[str, dict[str, ast.ClassDef]] = {}

    def tensors(self, qualified_name: str) -> list[str]:
        module, _, name = qualified_name.rpartition(".")
        if module not in self._modules:
            record = f"{self._prefix}code/{module.replace('.', '/')}.py"
            try:
                tree = ast.parse(self._archive.read(record).decode("utf-8"))
            except KeyError:
                raise TorchScriptArchiveError(f"{self._path}: {record} (the code of {qualified_name}) is missing") \
                    from None
            self._modules[module] = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
        cls = self._modules[module].get(name)
        if cls is None:
            raise TorchScriptArchiveError(f"{self._path}: class {qualified_name} is not declared in its code record")
        out: list[str] = []
        for node in cls.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id in ("__parameters__", "__buffers__")):
                out.extend(ast.literal_eval(node.value))
        return out


def _collect(obj: _ScriptObject, prefix: str, declared: _Declarations, state: dict[str, torch.Tensor],
             path: Path) -> None:
    """Parameters and buffers first, then submodules, in attribute order (ScriptModule.state_dict's keys)."""
    attributes = getattr(obj, "state", None)
    if not isinstance(attributes, dict):
        raise TorchScriptArchiveError(f"{path}: {prefix or 'the root module'} has no attribute state in data.pkl")
    for name in declared.tensors(obj.qualified_name):
        value = attributes.get(name)
        if isinstance(value, torch.Tensor):
            state[prefix + name] = value
        elif value is not None:
            raise TorchScriptArchiveError(f"{path}: {prefix + name} is declared a tensor but is {type(value).__name__}")
    for name, value in attributes.items():
        if isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", declared, state, path)
