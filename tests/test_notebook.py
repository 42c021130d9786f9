"""notebooks/caption_demo.ipynb runs headless (nbclient) on a tiny configuration and draws its figures."""
from __future__ import annotations

from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

from tests.tiny_models import TINY_ASSETS_CLIP, write_tiny_assets

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "caption_demo.ipynb"


def tiny_demo_config(root: Path) -> Path:
    """configs/demo.yaml in miniature: a tiny LM, a tiny random-init CLIP and a 40-image shapes set."""
    write_tiny_assets(root, num_questions=0)
    coco = root / "shapes" / "coco"
    config = {
        "model": {
            "language_model": str(root / "lm"), "attn_implementation": "eager",
            "excitor": {"num_layers": 2, "num_prompts": 4, "rank": 4, "visual_prompt_mode": "concat"},
            "vision": {"model_name": TINY_ASSETS_CLIP, "model_config_file": str(root / f"{TINY_ASSETS_CLIP}.json")},
        },
        "data": {"train_annotations": str(coco / "dataset_coco.json"), "image_root": str(coco / "images"),
                 "max_length": 32},
        "train": {"lr": 1e-2, "batch_size": 4, "precision": "fp32", "num_workers": 0, "log_every_steps": 1,
                  "eval_every_steps": 100, "save_every_steps": 100, "tensorboard": False, "device": "cpu"},
        "decoding": {"batch_size": 8, "max_new_tokens": 4},
    }
    path = root / "tiny_demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_caption_demo_notebook_runs_headless(tmp_path, monkeypatch):
    config = tiny_demo_config(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "config": str(config), "n_images": 4,
                                      "train_steps": 2, "device": "cpu"}))
    monkeypatch.setenv("MM_EXCITOR_NOTEBOOK_CONFIG", str(params))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()  # raises CellExecutionError on any error

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # captioned images, training curve, gates
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "has no checkpoint: training 2 steps" in text  # the tiny run was trained by the notebook itself
    assert "RANDOM-INIT" in text
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "adapter_model.safetensors").is_file()


def test_the_notebook_says_that_clip_is_random_init_and_ships_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    prose = " ".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    assert "random-init" in prose.lower() and "no pretrained clip" in prose.lower()
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # shipped clean
