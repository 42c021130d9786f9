"""OpenAI's original CLIP checkpoints are TorchScript archives: their weights load into the open_clip encoder without
executing the archive, equal to the weights that were saved; anything else in data.pkl is refused.

The archive is made here the way OpenAI's were: an open_clip CLIP with OpenAI's parameter names, partly fp16
(convert_weights_to_fp16, as OpenAI's state dicts are), the attention mask a plain attribute, the three size entries
(input_resolution, context_length, vocab_size) as tensors, traced with forward/encode_text/encode_image and saved
with torch.jit.save.
"""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch

from mm_excitor.torchscript import TorchScriptArchiveError, is_torchscript_archive, read_torchscript_state_dict
from mm_excitor.vision import VisionConfig, VisionEncoder

MODEL = "Tiny-OpenAI-Test"
CONFIG = {"embed_dim": 16, "quick_gelu": True,
          "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
          "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(model config file, TorchScript archive, the state dict that was saved)."""
    from open_clip.model import convert_weights_to_fp16

    folder = tmp_path_factory.mktemp("openai")
    config_file = folder / f"{MODEL}.json"
    config_file.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(config_file)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # not VisionConfig.init_seed: equal weights must come from the file
        model = open_clip.create_model(MODEL).eval()
    convert_weights_to_fp16(model)
    mask = model._buffers.pop("attn_mask")
    object.__setattr__(model, "attn_mask", mask)  # a plain attribute in OpenAI's model, not a buffer
    for name, value in {"input_resolution": 32, "context_length": 8, "vocab_size": 50}.items():
        model.__dict__.pop(name, None)
        model.register_buffer(name, torch.tensor(value))
    image, text = torch.ones(2, 3, 32, 32, dtype=torch.float16), torch.zeros(2, 8, dtype=torch.int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        traced = torch.jit.trace_module(model, {"forward": (image, text), "encode_text": (text,),
                                                "encode_image": (image,)}, check_trace=False)
        path = folder / "Tiny-OpenAI.pt"
        torch.jit.save(traced, str(path))
    return config_file, path, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_archive_is_what_weights_only_loading_refuses(archive):
    _, path, _ = archive
    assert is_torchscript_archive(path)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="weights_only"):
        torch.load(path, weights_only=True)


def test_reader_equals_the_scripted_modules_state_dict(archive):
    """The reference is torch.jit.load of the file this test made (trusted); the reader never runs it."""
    _, path, saved = archive
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.jit.load(str(path)).state_dict()
    state = read_torchscript_state_dict(path)
    assert list(state) == list(reference) and set(state) == set(saved)
    for key, value in reference.items():
        assert state[key].dtype == value.dtype == saved[key].dtype, key
        assert torch.equal(state[key], value) and torch.equal(state[key], saved[key]), key
    assert state["visual.proj"].dtype == torch.float16 and state["visual.class_embedding"].dtype == torch.float32


def test_vision_encoder_loads_the_openai_archive(archive):
    config_file, path, saved = archive
    encoder = VisionEncoder(VisionConfig(MODEL, pretrained=str(path), model_config_file=str(config_file)))
    loaded = encoder.visual.state_dict()
    assert set(loaded) == {k[len("visual."):] for k in saved if k.startswith("visual.")}
    for key, value in loaded.items():
        assert value.dtype == torch.float32 and torch.equal(value, saved[f"visual.{key}"].float()), key
    random_init = VisionEncoder(VisionConfig(MODEL, model_config_file=str(config_file))).visual.state_dict()
    assert not torch.equal(random_init["conv1.weight"], loaded["conv1.weight"])
    import hashlib

    identity = encoder.identity()
    assert identity["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert identity["init_seed"] is None
    assert encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 17, 64)


def test_weights_of_another_architecture_are_named(archive):
    _, path, _ = archive
    tiny_vit = Path(__file__).resolve().parents[1] / "configs" / "open_clip" / "Tiny-ViT.json"
    with pytest.raises(ValueError) as e:
        VisionEncoder(VisionConfig("Tiny-ViT", pretrained=str(path), model_config_file=str(tiny_vit)))
    msg = str(e.value)
    assert msg.startswith(f"{path}: these weights do not fit Tiny-ViT") and "\n" not in msg


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (shutil.copy, (__file__, str(self.marker)))


def test_code_in_data_pkl_is_refused_not_run(archive, tmp_path: Path):
    _, path, _ = archive
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps({"visual": _Payload(marker)}, protocol=2)
            dst.writestr(info, data)
    with pytest.raises(TorchScriptArchiveError, match=r"evil\.pt: data\.pkl refers to shutil\.copy"):
        read_torchscript_state_dict(evil)
    assert not marker.exists()
