"""LLaMA-Adapter (Zhang et al., 2023), V1 with its multimodal variant, as a baseline on the same frozen LM.

Each of the topmost `adapter_layers` attention layers gets `adapter_len` learnable adaption prompts P_l. Every
query attends to the prompts' keys and values (the layer's own frozen k_proj/v_proj applied to P_l, without
RoPE) through a separate softmax scaled by a zero-initialised gate, added to the ordinary attention output before
o_proj:

    out = softmax(Q K^T / sqrt(d) + mask) V + tanh(g_h) * softmax(Q (W_k P_l)^T / sqrt(d)) (W_v P_l)

as in the official training code (OpenGVLab/LLaMA-Adapter, alpaca_finetuning_v1/llama/model.py,
`Attention.forward`: `self.gate.tanh() * F.softmax(scores[..., :adapter_len])`; the inference code llama/model.py
has the same gate shape). The gate is per query head, a (1, H, 1, 1) tensor in the official code, not peft's one
scalar per layer: the official code is what the paper's numbers come from, and it lets each head open on its own.
With g = 0 the added term is an exact zero, so the model is the base model bit for bit at init.

Images (the paper's multimodal variant, its section 4.3): the frozen encoder's global feature (the CLS token) goes
through a trainable projection (LayerNorm o Linear, shared with the Excitor's `VisualProjection`), and is added to
every prompt of every adapted layer, per sample: P_l(b) = P_l + I_p(b). A row without an image adds nothing.

Why not peft's `AdaptionPrompt`: its prompts are one tensor shared by the batch (per-sample visual prompts do not
fit), it recomputes the query states (q_proj and RoPE) of every adapted layer, and its gate is a scalar. Here the
attention function receives the model's own RoPE'd queries through transformers' `AttentionInterface`: the model
runs `llama_adapter_<eager|sdpa>`, which calls the model's eager or SDPA attention and adds the prompt term for the
layers that carry `adaption_prompts`. The mask functions are the base implementation's, so padding, the causal
mask and the KV cache are the model's own. GQA: the prompt keys/values have the KV heads and are repeated to the
query heads as the model repeats its own.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..memo import InferenceMemo
from ..recipe import check_positive_ints
from ..language_model import top_decoder_layers
from ..vision_language import VisualProjection
from ..vision import VisionEncoder
from ..visual_prompts import KEYWORD, VisualPrompts, accept_in_generate
from .prompted import PromptedModel


BASE_IMPLEMENTATIONS = ("eager", "sdpa")
IMPLEMENTATION = "llama_adapter_{}"


@dataclass
class LlamaAdapterSettings:
    """LLaMA-Adapter V1's hyper-parameters; the defaults are the paper's LLaMA-7B setting (10 prompts on each of the
    top 30 of 32 layers: 30 * 10 * 4096 = 1,228,800 prompt parameters plus 30 * 32 gates)."""

    adapter_len: int = 10
    """K, the adaption prompts per adapted layer."""
    adapter_layers: int = 30
    """How many of the topmost decoder layers get adaption prompts."""

    def __post_init__(self) -> None:
        check_positive_ints(self, "model.llama_adapter", "adapter_len", "adapter_layers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class AdaptionPrompts(nn.Module):
    """One layer's adaption prompts (K x C, N(0, 1) as the official nn.Embedding init) and per-head gate (zero).

    It lives on the attention module as `adaption_prompts`; `adapted_attention` calls it with that module, the
    RoPE'd queries and the call's visual prompts (the language model's `visual_prompts` argument)."""

    def __init__(self, length: int, hidden_size: int, num_heads: int, device: torch.device) -> None:
        super().__init__()
        # Trainable tensors live in fp32 whatever the frozen model's dtype.
        self.prompts = nn.Parameter(torch.randn(length, hidden_size, device=device))
        self.gate = nn.Parameter(torch.zeros(num_heads, device=device))
        self._memo: InferenceMemo[tuple[torch.Tensor, torch.Tensor]] = InferenceMemo()

    def extra_repr(self) -> str:
        return f"prompts={tuple(self.prompts.shape)}, heads={self.gate.shape[0]}"

    def forward(self, attention: nn.Module, query: torch.Tensor, visual: VisualPrompts | None) -> torch.Tensor:
        """The gated prompt term (B x T x H x d, the layout of an attention function's output) for the queries
        (B x H x T x d) of `attention`, with the projected global visual feature of each row (B x 1 x C) added to
        every prompt of rows with an image (None: the learnable prompts alone)."""
        if visual is not None:
            if visual.tokens.shape[1:] != (1, self.prompts.shape[1]):
                raise ValueError(f"LLaMA-Adapter takes one visual feature per row, B x 1 x {self.prompts.shape[1]}; "
                                 f"got {tuple(visual.tokens.shape)}")
            visual.check_rows(query.shape[0])
        tensors = (None, None) if visual is None else (visual.tokens, visual.has_image)
        keys, values = self._memo.get((*tensors, self.prompts), lambda: self._keys_values(attention, visual))
        scores = torch.matmul(query, keys.to(query.dtype).transpose(2, 3)) * attention.scaling
        gate = self.gate.tanh().to(query.dtype).view(1, -1, 1, 1)
        weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype) * gate
        return torch.matmul(weights, values.to(query.dtype)).transpose(1, 2)

    def _prompt_set(self, visual: VisualPrompts | None) -> torch.Tensor:
        """P_l (1 x K x C), or P_l + I_p(b) for each row (B x K x C); a row without an image adds exact zeros."""
        if visual is None:
            return self.prompts[None]
        tokens, has_image = visual.tokens, visual.has_image
        # a multiplication, not a selection: the projection stays in the graph of an all text-only batch
        return self.prompts + tokens.to(self.prompts.dtype) * has_image[:, None, None].to(self.prompts.dtype)

    def _keys_values(self, attention: nn.Module, visual: VisualPrompts | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts through the layer's frozen k_proj and v_proj (no RoPE), as B x H x K x d."""
        prompts = self._prompt_set(visual)
        batch, length, _ = prompts.shape
        heads = self.gate.shape[0]

        def project(linear: nn.Module) -> torch.Tensor:
            out = linear(prompts.to(linear.weight.dtype))
            out = out.view(batch, length, -1, attention.head_dim).transpose(1, 2)
            return out.repeat_interleave(heads // out.shape[1], dim=1)  # KV heads -> query heads, as repeat_kv

        return project(attention.k_proj), project(attention.v_proj)


def adapted_attention(base: str) -> Callable:
    """An attention function: the model's own `base` attention plus, on layers with adaption prompts, their term."""

    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        output, weights = _base_attention(module, base)(module, query, key, value, attention_mask, **kwargs)
        prompts = getattr(module, "adaption_prompts", None)
        if prompts is not None:
            output = output + prompts(module, query, kwargs.get(KEYWORD)).to(output.dtype)
        return output, weights

    return attention


def _base_attention(module: nn.Module, base: str) -> Callable:
    if base != "eager":
        return ALL_ATTENTION_FUNCTIONS[base]
    # The eager path is each model's own function (Qwen2's takes a sliding window, for instance).
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"{type(module).__name__} has no eager_attention_forward; use attn_implementation='sdpa'")
    return eager


for _base in BASE_IMPLEMENTATIONS:
    AttentionInterface.register(IMPLEMENTATION.format(_base), adapted_attention(_base))
    AttentionMaskInterface.register(IMPLEMENTATION.format(_base), ALL_MASK_ATTENTION_FUNCTIONS[_base])


def adaption_prompts(model: nn.Module) -> list[AdaptionPrompts]:
    return [module for module in model.modules() if isinstance(module, AdaptionPrompts)]


def apply_adaption_prompts(model: nn.Module, settings: LlamaAdapterSettings) -> nn.Module:
    """Freeze `model` and give its topmost `settings.adapter_layers` attention layers adaption prompts, in place.
    The gates start at zero, so the model computes exactly what it computed before."""
    if adaption_prompts(model):
        raise ValueError("this model already has adaption prompts")
    layers = top_decoder_layers(model, settings.adapter_layers, "model.llama_adapter.adapter_layers")
    base = model.config._attn_implementation
    if base not in BASE_IMPLEMENTATIONS:
        raise ValueError(f"llama_adapter runs on attn_implementation {' or '.join(BASE_IMPLEMENTATIONS)}, "
                         f"not {base!r}")
    model.requires_grad_(False)
    config = model.config
    for layer in layers:
        layer.self_attn.adaption_prompts = AdaptionPrompts(
            settings.adapter_len, config.hidden_size, config.num_attention_heads, layer.self_attn.q_proj.weight.device
        )
    model.set_attn_implementation(IMPLEMENTATION.format(base))
    accept_in_generate(model)
    return model


class LlamaAdapterModel(PromptedModel):
    """A frozen causal LM with LLaMA-Adapter prompts; images add their projected CLS feature to the prompts."""

    method = "llama_adapter"
    settings_sections = ("llama_adapter",)

    def __init__(
        self, language_model: nn.Module, tokenizer: Any, settings: LlamaAdapterSettings,
        vision: VisionEncoder | None = None, *, vision_identity: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(apply_adaption_prompts(language_model, settings), tokenizer, vision,
                         vision_identity=vision_identity)
        self.settings = settings
        self.projection = VisualProjection(self.vision_width, language_model.config.hidden_size).to(self.device)

    def adapter_config(self) -> dict[str, Any]:
        return self.settings.to_dict()

    def visual_prompts(self, tokens: torch.Tensor, has_image: torch.Tensor) -> VisualPrompts:
        """The global feature only: the CLS token (the encoder's first), projected."""
        return VisualPrompts(self.projection(tokens[:, :1]), has_image)
