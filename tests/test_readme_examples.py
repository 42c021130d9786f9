"""The README's Python examples run as written, with the tiny assets in place of its placeholder paths and sizes:
a newcomer's first copy-paste must not fail on a renamed import or a changed signature."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tiny_models import TINY_ASSETS_CLIP, tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def with_tiny_assets(code: str, root: Path) -> str:
    """The placeholders a reader replaces (model paths, the pretrained CLIP), replaced by the tiny assets; everything
    else (imports, calls, arguments, sizes) stays as the README writes it."""
    code = re.sub(r'"/path/to/llama(-hf)?"', repr(str(root / "lm")), code)
    return re.sub(r'VisionConfig\("ViT-L-14-quickgelu", pretrained="/path/to/ViT-L-14.pt"\)',
                  f'VisionConfig({TINY_ASSETS_CLIP!r}, model_config_file={str(root / f"{TINY_ASSETS_CLIP}.json")!r})', code)


def test_the_readme_has_the_two_examples():
    blocks = readme_python_blocks()
    assert len(blocks) == 2
    assert "apply_excitor" in blocks[0] and "create_model" in blocks[1]


@pytest.mark.parametrize("index", [0, 1])
def test_a_readme_example_runs_on_tiny_assets(index, tmp_path, monkeypatch, capsys):
    import json

    from tests.tiny_models import TINY_CLIP_CONFIG

    # as many layers as LLaMA-7B, so that the README's layer counts and the defaults fit
    tiny_model(num_hidden_layers=32).save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    (tmp_path / f"{TINY_ASSETS_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    code = with_tiny_assets(readme_python_blocks()[index], tmp_path)
    assert "/path/to" not in code, "a placeholder the test does not know: update with_tiny_assets"
    monkeypatch.chdir(tmp_path)  # the example writes adapter/ where it runs
    rng = np.random.default_rng(0)
    scope = {"pil_images": [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]}
    exec(compile(code, f"README.md python block {index}", "exec"), scope)
    if index == 0:
        assert "trainable params" in capsys.readouterr().out
        assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    else:
        assert len(scope["captions"]) == 2 and all(isinstance(text, str) for text in scope["captions"])
