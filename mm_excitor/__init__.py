"""mm-excitor: Excitor blocks on frozen LLaMA-family models, for language-only and visual instruction tuning.

The public names load on first use (PEP 562), so light modules such as `mm_excitor.io` or `mm_excitor.cli` can be
imported by scoring commands without importing torch.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

# CPU threads that wait for work sleep instead of spinning. With spinning (OpenMP's default) torch's threads
# lose their turns as soon as another process shares the cores, and the machines this project runs on are shared
# (docs/design.md, "Measured numbers behind library defaults"). It only takes effect when this package is imported
# before torch, as every command of the project does; OMP_WAIT_POLICY=ACTIVE in the environment restores spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_PUBLIC = {
    "ExcitorConfig": "methods.excitor.config",
    "ParameterCount": "language_model",
    "UnsupportedModelError": "language_model",
    "apply_excitor": "methods.excitor.model",
    "count_parameters": "language_model",
    "excitor_blocks": "methods.excitor.model",
    "gate_values": "methods.excitor.model",
    "VisualPrompts": "visual_prompts",
    "load_adapter": "adapter_io",
    "save_adapter": "adapter_io",
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mm_excitor' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
