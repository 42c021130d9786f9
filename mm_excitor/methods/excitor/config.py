"""Excitor hyper-parameters: one dataclass, a dict round trip (what adapter configs store), and validation at
construction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...recipe import check_positive_ints

VISUAL_PROMPT_MODES = ("concat", "add")
KEY_ASSOCIATIONS = ("auto", "prompt", "token", "reference")
VISUAL_PROJECTIONS = ("shared", "separate_kv")
EXTRA_KEYS = ("projected", "direct")


NON_ADAPTER_FIELDS = ("key_association", "prompt_init_std", "affinity_init_gain")
"""Settings that are not part of a trained adapter: how the block's arithmetic is carried out, and how its tensors
start. An adapter trained with one setting loads and resumes with another."""

ADDED_FIELDS = {"visual_projection": "shared", "extra_key": "projected"}
"""Adapter fields added after adapters were first saved, with the value that an adapter without them was trained
with: such an adapter loads and resumes as that value."""


@dataclass
class ExcitorConfig:
    """How Excitor blocks are added to a frozen LLaMA-family model.

    Defaults are the paper's LLaMA-7B setting: the topmost 30 layers, 30 learnable prompts per layer, rank 16,
    which gives 30 * (30*4096 + 2*4096*16) = 7,618,560 trainable parameters plus one gate per KV head.
    """

    num_layers: int = 30
    """How many of the topmost decoder layers get an Excitor block."""
    num_prompts: int = 30
    """K, the learnable prompts per layer."""
    rank: int = 16
    """r, the width of the low-rank token-to-prompt affinity."""
    gate_tanh: bool = False
    """Use tanh(g) instead of g as the gate (LLaMA-Adapter's choice); both are zero at init."""
    prompt_init_std: float = 0.02
    """Std of the learnable prompts at init (like token embeddings); must be > 0 or nothing trains."""
    affinity_init_gain: float = 10.0
    """RMS of W_up W_down x over the RMS of x at init (W_down ~ N(0, gain / C), W_up ~ N(0, gain / r)). nn.Linear's
    default init gives 1/3, which on SmolLM2 starts the affinity nearly uniform: every token then mixes the same
    x~, its key shift is one vector that the softmax ignores, and the first steps are spent sharpening the affinity
    (docs/design.md). Must be > 0 (a zero W_up or W_down never trains)."""
    visual_prompt_mode: str | None = None
    """None for language-only; 'concat' appends projected visual tokens to each layer's prompts (K' = K + N_v),
    'add' resamples them to K tokens and adds them to the learnable prompts."""
    visual_projection: str = "shared"
    """How visual tokens become prompts: 'shared', one trainable projection whose output serves as the Excitor's
    keys and values; 'separate_kv', the authors' multi-modal diagram: a trainable Wk_Excitor makes the keys and a
    separate Wv_Excitor the values (docs/design.md, "Faithful variants")."""
    extra_key: str = "projected"
    """How the extra attention key a . P enters the keys: 'projected', through the frozen W_k
    (K' = W_k x + g * W_k (a . P)); 'direct', the authors' diagram: a . P is itself a key (K' = W_k x + g * a . P),
    so the prompts, the Excitor query and the visual projection live in the key width C_kv."""
    key_association: str = "auto"
    """The one switch between the block's reference forward and its fast paths (mm_excitor/methods/excitor/fast_path.py):
    'reference' (the equations, as autograd differentiates them), 'prompt' (W_k P, K' rows per sample or once for a
    shared set), 'token' (W_k (a . P), M rows) or 'auto' (per call, whichever the cost model prices lower). The
    values are the same; only the cost differs. The fast paths exist for the shared, projected block only; the other
    variants always run the reference."""

    def __post_init__(self) -> None:
        check_positive_ints(self, "ExcitorConfig", "num_layers", "num_prompts", "rank")
        if self.prompt_init_std <= 0:
            raise ValueError("ExcitorConfig.prompt_init_std must be > 0: zero prompts receive no gradient")
        if self.affinity_init_gain <= 0:
            raise ValueError("ExcitorConfig.affinity_init_gain must be > 0: a zero W_up or W_down receives no gradient")
        if self.visual_prompt_mode is not None and self.visual_prompt_mode not in VISUAL_PROMPT_MODES:
            raise ValueError(
                f"ExcitorConfig.visual_prompt_mode must be one of {VISUAL_PROMPT_MODES} or None, "
                f"got {self.visual_prompt_mode!r}"
            )
        for name, valid in (("visual_projection", VISUAL_PROJECTIONS), ("extra_key", EXTRA_KEYS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"ExcitorConfig.{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.key_association not in KEY_ASSOCIATIONS:
            raise ValueError(
                f"ExcitorConfig.key_association must be one of {KEY_ASSOCIATIONS}, got {self.key_association!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses_fast_path(self) -> bool:
        """Whether the blocks run a fast path (the shared, projected variant unless 'reference' is asked for)."""
        return (self.key_association != "reference" and self.visual_projection == "shared"
                and self.extra_key == "projected")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExcitorConfig":
        """The config of `values`; a field they lack takes its default (adapters saved before `visual_projection`
        and `extra_key` existed are the shared, projected block)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ExcitorConfig keys {unknown}; valid keys are {sorted(known)}")
        return cls(**values)
