"""Tiny random-init LLaMA-family models built from configs (nothing is downloaded)."""
from __future__ import annotations

import dataclasses

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

FAMILIES = {
    "llama-mha": (LlamaConfig, {"num_key_value_heads": 4}),
    "llama-gqa": (LlamaConfig, {"num_key_value_heads": 2}),
    "mistral": (MistralConfig, {"num_key_value_heads": 2, "sliding_window": None}),
    "qwen2": (Qwen2Config, {"num_key_value_heads": 2}),
}


def tiny_config(family: str = "llama-gqa", **overrides):
    config_class, extra = FAMILIES[family]
    values = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    values.update(extra)
    values.update(overrides)
    return config_class(**values)


def tiny_model(family: str = "llama-gqa", attn_implementation: str = "eager", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), attn_implementation=attn_implementation)
    return model.eval()


WORDS = ("a red green blue yellow circle square triangle small large photo of the image caption describe "
         "in one sentence answer is question context options n/a yes no left right two three").split()


def tiny_tokenizer():
    """A word-level tokenizer (specials + WORDS + punctuation) that fits the tiny models' 96-token vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for token in [*WORDS, ".", ",", ":", "?", "(", ")", "\n", *"ABCDE"]:
        vocab.setdefault(token, len(vocab))
    assert len(vocab) <= 96
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
}


def tiny_vision_config(tmp_path, **overrides):
    """A VisionConfig for a 2-layer random-init open_clip ViT registered from a JSON file in tmp_path."""
    import json

    from mm_excitor.vision import VisionConfig

    path = tmp_path / "TinyTestViT.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return VisionConfig(model_name="TinyTestViT", model_config_file=str(path), **overrides)


TINY_ASSETS_CLIP = "TinyAssetsViT"


def write_tiny_assets(root, num_questions: int = 40):
    """What an end-to-end run needs, in miniature: a tiny LM + tokenizer saved like a Hugging Face checkpoint
    (`root/lm`), a tiny open_clip config (`root/TinyAssetsViT.json`) and a 40-image shapes set (`root/shapes`)."""
    import json

    from data.shapes import main as make_shapes

    tiny_model().save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    (root / f"{TINY_ASSETS_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    make_shapes(["--out", str(root / "shapes"), "--num-images", "40", "--num-questions", str(num_questions),
                 "--seed", "0", "--image-size", "32", "--difficulty", "simple", "--test-fraction", "0.25",
                 "--val-fraction", "0.1", "--no-progress"])
    return root


TINY_CACHE = {"model_name": "tiny-cache", "num_tokens": 5, "width": 8}
"""The encoder identity of a feature cache of 5 x 8 visual tokens (tests/train/helpers.py's N_V x D_V)."""


def tiny_method_config():
    """A ModelConfig whose every method section fits the 4-layer tiny models."""
    from mm_excitor.methods.excitor.config import ExcitorConfig
    from mm_excitor.factory import ModelConfig
    from mm_excitor.methods.llama_adapter import LlamaAdapterSettings
    from mm_excitor.methods.lora import LoraSettings

    return ModelConfig(excitor=ExcitorConfig(num_layers=2, num_prompts=4, rank=4, visual_prompt_mode="concat"),
                       lora=LoraSettings(r=4), llama_adapter=LlamaAdapterSettings(adapter_len=3, adapter_layers=2))


def tiny_method_model(method: str, base=None, vision=None, seed: int = 1, config=None):
    """`method`'s model on a copy of `base` (default: the tiny LLaMA), fed by `vision` or else by a 5 x 8 token
    feature cache; `seed` sets the adapter's initialisation."""
    import copy

    from mm_excitor.factory import method_model

    base = copy.deepcopy(base) if base is not None else tiny_model()
    torch.manual_seed(seed)
    config = dataclasses.replace(config or tiny_method_config(), method=method)
    return method_model(config, base, tiny_tokenizer(), vision=vision,
                        vision_identity=None if vision else TINY_CACHE).eval()
