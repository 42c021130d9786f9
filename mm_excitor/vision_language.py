"""What every visual instruction-tuning method shares: a frozen causal LM and its tokenizer, a frozen image encoder
(or, when training from a feature cache, the identity of the encoder that made it), and one interface that the
Trainer, the Tasks and evaluation use whatever the method:

    model(input_ids, attention_mask, labels, images | visual_tokens, has_image, num_items_in_batch) -> .loss
    model.generate(input_ids, attention_mask, images | visual_tokens, has_image, decoding) -> list[str]
    model.adapter_metadata(), model.adapter_state()          (what an adapter checkpoint records and saves)
    model.fsdp_units()                                       (what FSDP shards as units of their own)

A method subclasses `VisionLanguageModel`, names its `settings_sections` of a ModelConfig (the settings its
constructor takes, in that order), implements `forward_ids`, `generate_ids` and `adapter_config` (`forward` and
`generate` check the inputs and encode the images, once for every method), and is registered in
`mm_excitor.methods.METHODS`. Its trainable tensors are the parameters with requires_grad: by default they are what
its checkpoints save, and its maximal trainable submodules its FSDP units; a method overrides the hooks where it
knows better.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from .decoding import Decoding
from .identity import language_model_identity
from .language_model import trainable_state_dict, trainable_units
from .vision import VisionEncoder


IGNORE_INDEX = -100
"""Hugging Face's label for positions the loss leaves out (prompt, padding, inserted slots)."""


def summed_label_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's summed log-probability of its labelled tokens (B), from the logits at the text's positions
    (B x T x V): position t predicts token t + 1, as for the loss."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:].to(logits.device)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (logp * (targets != IGNORE_INDEX)).sum(-1)


class VisualProjection(nn.Module):
    """phi = LayerNorm o Linear(D -> C): puts visual tokens on the LM's hidden-state scale."""

    def __init__(self, vision_width: int, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_width, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(tokens.to(self.linear.weight.dtype)))


class AdapterHooks(Protocol):
    """What checkpoints and distributed training ask of any adapted model: a `VisionLanguageModel`, or a bare causal
    LM that a method adapted in place (`mm_excitor.methods.adapter_of` finds the hooks of either)."""

    method: str

    def adapter_metadata(self) -> dict[str, Any]:
        """{"method", "config", "identity"}: what a checkpoint of the adapter records and must match to load."""

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint saves and loads, by name (the live parameters, detached)."""

    def fsdp_units(self) -> list[nn.Module]:
        """The adapter's submodules that FSDP shards as units of their own (the decoder layers and the root follow)."""


class VisionLanguageModel(nn.Module, metaclass=abc.ABCMeta):
    """A frozen LM that a method teaches to see; give it an encoder (`vision`) or a cache's `vision_identity`."""

    method: ClassVar[str]
    settings_sections: ClassVar[tuple[str, ...]]
    """The ModelConfig sections the method is built from, passed to its constructor in this order."""
    ddp_find_unused_parameters: ClassVar[bool] = False
    """Whether some trainable tensor can get no gradient in a step (DDP must then search the graph every step)."""
    takes_images: ClassVar[bool] = True
    """False for a language-only method: a row with an image is an error, and blank rows' tensors are not read."""
    non_adapter_fields: ClassVar[tuple[str, ...]] = ()
    """Settings that are not part of a trained adapter (how its arithmetic runs, how its tensors start): an adapter
    trained with one value loads and resumes with another."""
    added_fields: ClassVar[dict[str, Any]] = {}
    """Settings added after adapters were first saved, with the value that an adapter without them was trained with."""

    def __init__(
        self, language_model: nn.Module, tokenizer: Any, vision: VisionEncoder | None = None,
        *, vision_identity: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (vision is None) == (vision_identity is None):
            raise ValueError("give exactly one of `vision` (an encoder) or `vision_identity` (from a feature cache)")
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.vision = vision
        self.vision_identity = vision.identity() if vision is not None else dict(vision_identity)
        # Taken before a method wraps any of the LM's layers (e.g. LoRA on k_proj), which the identity reads.
        self.language_identity = language_model_identity(language_model)

    @property
    def vision_width(self) -> int:
        return int(self.vision_identity["width"])

    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    def adapter_identity(self) -> dict[str, Any]:
        return {"language_model": dict(self.language_identity), "vision": dict(self.vision_identity)}

    @abc.abstractmethod
    def adapter_config(self) -> dict[str, Any]:
        """The method's hyper-parameters, as an adapter checkpoint records them."""

    def adapter_metadata(self) -> dict[str, Any]:
        return {"method": self.method, "config": self.adapter_config(), "identity": self.adapter_identity()}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return trainable_state_dict(self)

    def fsdp_units(self) -> list[nn.Module]:
        return trainable_units(self)

    @classmethod
    def language_only(cls, language_model: nn.Module) -> AdapterHooks | None:
        """The hooks of a bare causal LM that this method adapted in place (language-only use), None if it did not.
        Most methods exist only as their model; the Excitor also adapts a bare LM (`apply_excitor`)."""
        return None

    @classmethod
    def adapt_language_model(cls, language_model: nn.Module, config: dict[str, Any]) -> nn.Module:
        """Adapt a bare causal LM in place with the settings an adapter checkpoint recorded, to load it into."""
        raise ValueError(f"a {cls.method!r} adapter loads into its method's model (factory.create_model), "
                         "not into a bare language model")

    def visual_tokens(
        self, batch_size: int, images: torch.Tensor | None, visual_tokens: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The frozen encoder's tokens of the batch (B x N_v x D), encoding images if needed; None without images.

        One image (or set of tokens) per row: a mismatch is an error, never a silent broadcast."""
        if images is not None and visual_tokens is not None:
            raise ValueError("pass images or visual_tokens, not both")
        if images is None and visual_tokens is None:
            return None
        given = images if images is not None else visual_tokens
        if given.shape[0] != batch_size:
            raise ValueError(f"{given.shape[0]} images (or visual token sets) for a batch of {batch_size} texts: "
                             "pass one per text (zeros with has_image=False for a text without an image)")
        if images is not None:
            if self.vision is None:
                raise ValueError("this model was built from a feature cache (no vision encoder): pass visual_tokens")
            tokens = self.vision(images)
        else:
            tokens = visual_tokens
        expected = self.vision_identity["num_tokens"], self.vision_identity["width"]
        if tuple(tokens.shape[1:]) != tuple(expected):
            raise ValueError(f"visual tokens of shape {tuple(tokens.shape)} do not match the encoder's N x D = {expected}")
        return tokens.to(self.device)

    def checked_visual_tokens(
        self, batch_size: int, images: torch.Tensor | None, visual_tokens: torch.Tensor | None, flags: torch.Tensor
    ) -> torch.Tensor | None:
        """`visual_tokens` of the batch; a language-only method refuses rows with an image and reads no tensor."""
        if self.takes_images:
            return self.visual_tokens(batch_size, images, visual_tokens)
        if (images is not None or visual_tokens is not None) and bool(flags.any()):
            raise ValueError(f"the {self.method!r} method is language-only: {int(flags.sum())} of {batch_size} rows "
                             "have an image (train images with excitor, lora, llama_adapter or prefix)")
        return None

    @staticmethod
    def image_flags(batch_size: int, has_image: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if has_image is None:
            return torch.ones(batch_size, dtype=torch.bool, device=device)
        if tuple(has_image.shape) != (batch_size,):
            raise ValueError(f"has_image has shape {tuple(has_image.shape)}, expected ({batch_size},)")
        return has_image.to(device=device, dtype=torch.bool)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | float | None = None,
    ):
        """A Hugging Face CausalLMOutput; with labels, `.loss` is the mean over label tokens, or their sum divided
        by `num_items_in_batch` when given (how the Trainer normalises over ranks and accumulation steps)."""
        batch = input_ids.shape[0]
        flags = self.image_flags(batch, has_image, self.device)
        tokens = self.checked_visual_tokens(batch, images, visual_tokens, flags)
        loss_kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        return self.forward_ids(input_ids, attention_mask, labels, tokens, flags, loss_kwargs)

    @abc.abstractmethod
    def forward_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
        tokens: torch.Tensor | None, has_image: torch.Tensor, loss_kwargs: dict[str, Any],
    ):
        """The method's forward of checked inputs: the batch's visual tokens (B x N_v x D, or None), one image flag
        per row, and the loss's keyword arguments for the language model (`num_items_in_batch`)."""

    @abc.abstractmethod
    def generate_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor | None,
        has_image: torch.Tensor, decoding: Decoding,
    ) -> torch.Tensor:
        """The new token ids (B x T) after left-padded prompts, given the batch's visual tokens."""

    def generate(self, *inputs: torch.Tensor | None, decoding: Decoding = Decoding(),
                 **named: torch.Tensor | None) -> list[str]:
        """Texts for a collated generation batch (`generate_tokens`' arguments): prompts left-padded (the collator's
        `prompts()`), so an item's output does not depend on what else is in its batch."""
        new = self.generate_tokens(*inputs, decoding=decoding, **named)
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        *,
        decoding: Decoding = Decoding(),
    ) -> torch.Tensor:
        """The new token ids (B x T) of a collated generation batch (the collator's `prompts()`), what `generate`
        decodes: a row that stopped holds the EOS token it stopped at (then padding); one without EOS ran to
        `decoding.max_new_tokens`."""
        if attention_mask is None or bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate needs left-padded prompts with their attention_mask (a collator's prompts())")
        was_training = self.training
        self.eval()
        try:
            device = self.device
            batch = input_ids.shape[0]
            flags = self.image_flags(batch, has_image, device)
            tokens = self.checked_visual_tokens(batch, images, visual_tokens, flags)
            return self.generate_ids(input_ids.to(device), attention_mask.to(device), tokens, flags, decoding)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def label_log_likelihoods(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        images: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each row's summed log-probability of its labelled tokens (IGNORE_INDEX elsewhere), for a collated training
        batch: how the multiple-choice likelihood protocol ranks answers, whatever the method."""
        was_training = self.training
        self.eval()
        try:
            out = self(input_ids, attention_mask, images=images, visual_tokens=visual_tokens, has_image=has_image)
        finally:
            self.train(was_training)
        return summed_label_log_probs(self.text_logits(out.logits, attention_mask.to(out.logits.device)), labels)

    def text_logits(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The logits at the text's own positions (B x T x V); methods that insert positions override it."""
        return logits

    def generate_new_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoding: Decoding,
                            **model_kwargs: Any) -> torch.Tensor:
        """The new token ids of the frozen LM's own `generate` after left-padded prompt ids, with the method's extra
        forward arguments (`model_kwargs`)."""
        output = self.language_model.generate(
            input_ids=input_ids, attention_mask=attention_mask,
            **decoding.generate_kwargs(self.pad_token_id(), self.tokenizer.eos_token_id), **model_kwargs,
        )
        return output[:, input_ids.shape[1]:]

    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id
