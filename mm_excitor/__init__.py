"""mm-excitor: Excitor blocks on frozen LLaMA-family models, for language-only and visual instruction tuning."""
from .checkpoint import load_adapter, save_adapter
from .config import ExcitorConfig
from .model import (
    ParameterCount,
    UnsupportedModelError,
    apply_excitor,
    count_parameters,
    excitor_blocks,
    gate_values,
    set_visual_tokens,
)

__all__ = [
    "ExcitorConfig",
    "ParameterCount",
    "UnsupportedModelError",
    "apply_excitor",
    "count_parameters",
    "excitor_blocks",
    "gate_values",
    "load_adapter",
    "save_adapter",
    "set_visual_tokens",
]
__version__ = "0.1.0"
