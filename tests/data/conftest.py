"""Fixtures for the data tests: the bundled samples (copied to a temp dir when a test corrupts them) and tiny
byte-level BPE tokenizers built in memory (nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
COCO = SAMPLES / "coco"
SQA = SAMPLES / "scienceqa"

_CORPUS = [
    "Describe the image in one sentence.\nCaption: A cat on a sofa. A red coffee cup on a wooden table.",
    "Question: Which change of state happened to the water?\nContext: N/A\nOptions: (A) melting (B) freezing\n"
    "Answer: The answer is B. Lecture solution galaxies rocket astronaut",
]


def _tokenizer(bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    if bos:  # LLaMA-style: the tokenizer prepends BOS when add_special_tokens=True
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tokenizer():
    """Byte-level BPE that adds BOS, like LLaMA's."""
    return _tokenizer(bos=True)


@pytest.fixture(scope="session")
def tokenizer_nobos():
    """Byte-level BPE without BOS, like GPT-2/SmolLM2."""
    return _tokenizer(bos=False)


@pytest.fixture
def coco_copy(tmp_path: Path) -> Path:
    """A writable copy of the bundled COCO samples."""
    shutil.copytree(COCO, tmp_path / "coco")
    return tmp_path / "coco"


@pytest.fixture
def sqa_copy(tmp_path: Path) -> Path:
    """A writable copy of the bundled ScienceQA samples."""
    shutil.copytree(SQA, tmp_path / "scienceqa")
    return tmp_path / "scienceqa"



@pytest.fixture
def train2017(coco_copy: Path) -> Path:
    """A captions_train2017.json-style file in the copy: train2017 holds val2014 images under new names; here all
    four val2014 images (Karpathy test 900001 and 900002, restval 900004, val 900005)."""
    ann = json.loads((coco_copy / "annotations" / "captions_val2014.json").read_text(encoding="utf-8"))
    (coco_copy / "train2017").mkdir()
    for im in ann["images"]:
        new = f"{im['id']:012d}.jpg"
        shutil.copy(coco_copy / "val2014" / im["file_name"], coco_copy / "train2017" / new)
        im["file_name"] = new
    path = coco_copy / "annotations" / "captions_train2017.json"
    path.write_text(json.dumps(ann), encoding="utf-8")
    return path
