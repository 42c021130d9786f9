"""The bundled samples are small and exactly what data/samples/make_samples.py writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for d in ("coco", "scienceqa") for p in sorted((root / d).rglob("*")) if p.is_file()}


def test_samples_are_small():
    assert sum(len(b) for b in _files(SAMPLES).values()) < 1_000_000


def test_samples_match_the_generator(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("mm_excitor_make_samples", SAMPLES / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    committed, regenerated = _files(SAMPLES), _files(tmp_path)
    assert sorted(committed) == sorted(regenerated)
    assert [k for k in committed if committed[k] != regenerated[k]] == []
