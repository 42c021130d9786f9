"""The Excitor (the method this project is named after): its hyper-parameters (config.py), the block that adds the
excited key to a layer's frozen keys (layer.py, with its fast paths fast_path.py and their hand-written backwards
bypass.py), adding blocks to a causal LM (model.py), and the visual instruction-tuning method built on them
(method.py)."""
from __future__ import annotations

from .config import ExcitorConfig
from .layer import ExcitorKeyProjection
from .method import MultimodalExcitor
from .model import apply_excitor, excitor_blocks, gate_values

__all__ = ["ExcitorConfig", "ExcitorKeyProjection", "MultimodalExcitor", "apply_excitor", "excitor_blocks",
           "gate_values"]
