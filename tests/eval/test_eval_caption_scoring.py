"""Caption scoring: parity with pycocoevalcap's own COCOEvalCap, install folder untouched, clear input errors.

Java start-up (PTB tokenizer, METEOR) dominates the run time, so each scoring run is a module-scoped fixture shared
by several assertions. The parity runs score the tokenizer's edge cases plus 1,000 synthetic images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.caption_scoring import run_cocoevalcap, synthetic_coco
from eval import caption_metrics
from eval import meteor as meteor_module
from eval import spice as spice_module
from eval.caption import main as score_or_generate
from eval.caption_files import load_references, write_results
from eval.caption_metrics import METRICS, CaptionInputError, score_captions
from eval.java import JavaNotFoundError, require_java
from eval.spice import SpiceUnavailableError
from mm_excitor.cli import run_cli
from tests.meteor_helpers import StandInMeteor, process_group_is_gone


def caption_main(argv: list[str]) -> int:
    """`python -m eval.caption ...`: its exit status."""
    return run_cli(score_or_generate, argv)


PKG_DIR = Path(spice_module.SPICE_DIR).parent  # the pycocoevalcap install folder

# Image order deliberately unsorted: pycocoevalcap iterates in GT order and so must we.
REFERENCES = {
    42: ["A dog runs on the grass.", "a brown dog running across a lawn", "The dog is playing outside!",
         "A puppy runs in a field.", "dog on grass"],
    7: ['A man said "hello" to the crowd.', "a man speaking to people", "Man at a podium talks.",
        "A person giving a speech.", "someone addresses an audience"],
    1001: ["Two cats sleep on a red couch.", "cats sleeping on the sofa", "A pair of cats napping.",
           "two kittens on a couch", "Cats resting on furniture."],
    3: ["A red bus drives down a city street.", "a double-decker bus in traffic", "The bus is on the road.",
        "A bus parked near a sidewalk.", "Red bus, city, daytime."],
}
RESULTS = [  # punctuation, a quote, a newline and an empty caption: the tokenizer's edge cases
    {"image_id": 1001, "caption": "two cats sleeping on a couch"},
    {"image_id": 3, "caption": 'A "red" bus -- on the street...'},
    {"image_id": 42, "caption": "A dog\nrunning on grass."},
    {"image_id": 7, "caption": ""},
]


def _gt(refs: dict[int, list[str]]) -> dict:
    anns = [{"image_id": i, "caption": c} for i, cs in refs.items() for c in cs]
    return {"images": [{"id": i} for i in refs], "annotations": [dict(a, id=k + 1) for k, a in enumerate(anns)]}


def _parity_set() -> tuple[dict[int, list[str]], list[dict]]:
    """The edge cases first, then 1,000 synthetic images (ids from 100,000: no clash)."""
    gt, results = synthetic_coco(1000, seed=3)
    refs = {**REFERENCES, **{image["id"]: [] for image in gt["images"]}}
    for annotation in gt["annotations"]:
        refs[annotation["image_id"]].append(annotation["caption"])
    return refs, [*RESULTS, *results]


PARITY_REFERENCES, PARITY_RESULTS = _parity_set()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("captions")
    (d / "gt.json").write_text(json.dumps(_gt(REFERENCES)))
    (d / "res.json").write_text(json.dumps(RESULTS))
    (d / "parity_gt.json").write_text(json.dumps(_gt(PARITY_REFERENCES)))
    (d / "parity_res.json").write_text(json.dumps(PARITY_RESULTS))
    return {"dir": d, "gt": d / "gt.json", "res": d / "res.json",
            "parity_gt": d / "parity_gt.json", "parity_res": d / "parity_res.json"}


_WRITES: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    """Record every file this process opens for writing while `_WRITES` is armed."""
    if _WRITES is None or event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path, mode, flags = args
    writing = (isinstance(mode, str) and any(c in mode for c in "wxa+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    if writing:
        _WRITES.append(os.path.abspath(os.fsdecode(path)))


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def ours(files: dict[str, Path]) -> dict:
    """Our scorer, with every in-process write and the install folder's listing recorded."""
    global _WRITES
    sys.addaudithook(_audit)
    before = _listing(PKG_DIR)
    workdir = files["dir"] / "work"
    helpers: list[int] = []

    class RecordedMeteor(meteor_module.MeteorProcess):
        def __init__(self, workdir: Path | None = None) -> None:
            super().__init__(workdir)
            helpers.append(self._proc.pid)  # also the process group of its JVM

    _WRITES = []
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(caption_metrics, "MeteorProcess", RecordedMeteor)
            scores = score_captions(files["parity_res"], files["parity_gt"], workdir=workdir)
    finally:
        writes, _WRITES = _WRITES, None
    return {"scores": scores, "writes": writes, "before": before, "after": _listing(PKG_DIR), "workdir": workdir,
            "meteor_process_groups": helpers}


@pytest.fixture(scope="module")
def reference(files: dict[str, Path]) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """pycocoevalcap's COCOEvalCap run directly (metrics, per-image scores); only SPICE (which downloads CoreNLP)
    is stubbed out."""
    return run_cocoevalcap(files["parity_gt"], files["parity_res"])


@pytest.fixture(scope="module")
def cli(files: dict[str, Path]) -> dict:
    """`python -m eval.caption score` in a fresh interpreter, with every module it imports listed (-X importtime)."""
    out = files["dir"] / "cli"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "eval.caption", "score", "--results", str(files["parity_res"]),
         "--annotations", str(files["parity_gt"]), "--out", str(out), "--workdir", str(files["dir"] / "cli-work")],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return {"modules": modules, "report": json.loads((out / "caption_scores.json").read_text()),
            "per_image": json.loads((out / "caption_per_image.json").read_text())["images"]}


def test_corpus_scores_equal_cocoevalcap(ours: dict, reference: tuple) -> None:
    scores = ours["scores"]
    assert list(scores.metrics) == list(METRICS)
    for name in METRICS:
        if name == "METEOR":
            assert scores.metrics[name] == pytest.approx(reference[0][name], abs=1e-6)
        else:
            assert scores.metrics[name] == reference[0][name], name
    assert scores.metrics["CIDEr"] > 0.1  # a real score, not an all-zero degenerate case


def test_per_image_scores_equal_cocoevalcap(ours: dict, reference: tuple) -> None:
    scores = ours["scores"]
    assert list(scores.per_image) == list(PARITY_REFERENCES)
    for image_id, per in scores.per_image.items():
        for name in METRICS:
            assert per[name] == pytest.approx(reference[1][image_id][name], abs=1e-6 if name == "METEOR" else 0)
    assert scores.captions[7] == ""
    assert (scores.subset, scores.coverage, scores.n_images) == (False, "1004/1004", 1004)


def test_the_score_command_equals_cocoevalcap(cli: dict, reference: tuple) -> None:
    assert cli["report"]["metrics"].keys() == set(METRICS)
    for name in METRICS:
        assert cli["report"]["metrics"][name] == pytest.approx(reference[0][name], abs=1e-6)
    assert [row["image_id"] for row in cli["per_image"]] == list(PARITY_REFERENCES)
    for row in cli["per_image"]:
        for name in METRICS:
            assert row[name] == pytest.approx(reference[1][row["image_id"]][name], abs=1e-6)


def test_the_score_command_does_not_import_the_model_stack(cli: dict) -> None:
    assert "eval.caption_metrics" in cli["modules"]  # the list is real
    assert not {"torch", "transformers", "open_clip"} & cli["modules"]


def test_nothing_is_written_into_the_pycocoevalcap_folder_or_left_running(ours: dict) -> None:
    assert not [w for w in ours["writes"] if w.startswith(str(PKG_DIR))]
    assert ours["before"] == ours["after"]
    assert len(ours["meteor_process_groups"]) == 1
    assert process_group_is_gone(ours["meteor_process_groups"][0])  # the METEOR helper and its JVM stopped
    # the tokenizer's temp file went to the work directory instead, which is cleaned up
    assert any(w.startswith(str(ours["workdir"])) for w in ours["writes"])
    assert list(ours["workdir"].iterdir()) == []


def test_meteor_starts_first_and_works_while_the_other_scorers_run(files: dict[str, Path], monkeypatch) -> None:
    """The order that makes scoring as fast as COCOEvalCap: METEOR's JVM loads its tables during tokenisation, and
    its answer is awaited only after BLEU, ROUGE-L and CIDEr (bench/caption_scoring.py measures the time)."""
    events: list[str] = []

    class RecordingMeteor(StandInMeteor):
        def __init__(self, workdir: Path | None = None) -> None:
            events.append("METEOR started")
            super().__init__(workdir)

        def submit(self, gts: dict, res: dict) -> None:
            events.append("METEOR submitted")
            super().submit(gts, res)

        def result(self) -> tuple[float, list[float]]:
            events.append("METEOR awaited")
            return super().result()

    def recording(name: str, function):
        def wrapper(*args, **kwargs):
            events.append(name)
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(caption_metrics, "MeteorProcess", RecordingMeteor)
    monkeypatch.setattr(caption_metrics, "ptb_tokenize", recording("tokenize", caption_metrics.ptb_tokenize))
    for scorer in (caption_metrics.Bleu, caption_metrics.Rouge, caption_metrics.Cider):
        monkeypatch.setattr(scorer, "compute_score", recording(scorer.__name__, scorer.compute_score))
    score_captions(files["res"], files["gt"])
    assert events == ["METEOR started", "tokenize", "tokenize", "METEOR submitted", "Bleu", "Rouge", "Cider",
                      "METEOR awaited"]


def test_subset_is_allowed_only_when_asked_and_marked_everywhere(files: dict[str, Path], capsys, monkeypatch) -> None:
    monkeypatch.setattr(caption_metrics, "MeteorProcess", StandInMeteor)
    partial = files["dir"] / "partial.json"
    partial.write_text(json.dumps(RESULTS[:3]))
    (files["dir"] / "partial.meta.json").write_text(json.dumps({"decoding": {"batch_size": 8, "num_beams": 3,
                                                                             "max_new_tokens": 30}}))
    with pytest.raises(CaptionInputError, match=r"1 of 4 reference images have no caption: 7\b.*--allow-subset"):
        score_captions(partial, files["gt"])
    out = files["dir"] / "report"
    argv = ["score", "--results", str(partial), "--annotations", str(files["gt"]), "--out", str(out)]
    assert caption_main(argv) == 2
    assert "--allow-subset" in capsys.readouterr().err
    assert caption_main([*argv, "--allow-subset"]) == 0
    assert "SUBSET: 3/4 images" in capsys.readouterr().out
    report = json.loads((out / "caption_scores.json").read_text())
    assert (report["subset"], report["coverage"], report["n_images"]) == (True, "3/4", 3)
    assert report["decoding"] == {"batch_size": 8, "num_beams": 3, "max_new_tokens": 30}
    assert set(report["metrics"]) == set(METRICS) and report["metrics"]["METEOR"] == 0.5
    markdown = (out / "caption_scores.md").read_text()
    assert markdown.startswith("# Caption scores (SUBSET 3/4)")
    assert "| num_beams | 3 |" in markdown and "| CIDEr |" in markdown
    per_image = json.loads((out / "caption_per_image.json").read_text())
    assert (per_image["subset"], per_image["coverage"]) == (True, "3/4")
    assert [row["image_id"] for row in per_image["images"]] == [42, 1001, 3]


@pytest.mark.parametrize(("results", "message"), [
    ({"image_id": 42, "caption": "x"}, "must be a list"),
    ([], "empty"),
    ([*RESULTS, {"image_id": 42, "caption": "again"}, {"image_id": 3, "caption": "b"}],
     r"2 duplicate image_id\(s\) in the results: 42, 3"),
    ([*RESULTS, {"image_id": 999, "caption": "x"}, {"image_id": 5, "caption": "y"}],
     r"not in the references: 999, 5"),
    ([{"image_id": "42", "caption": "x"}], r"image_id '42' is a str, not an int"),
    ([{"image_id": 42}], r"results\[0\] is not an"),
])
def test_bad_results_are_rejected_naming_the_ids(results: object, message: str, files: dict[str, Path]) -> None:
    with pytest.raises(CaptionInputError, match=message):
        score_captions(results, files["gt"], allow_subset=True)  # type: ignore[arg-type]


def test_missing_java_is_reported_with_an_install_hint(tmp_path: Path, monkeypatch, files, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match="no `java` was found on PATH.*apt-get install openjdk-17-jre-headless"):
        require_java()
    with pytest.raises(JavaNotFoundError, match="conda install -c conda-forge openjdk"):
        score_captions(files["res"], files["gt"])
    assert caption_main(["score", "--results", str(files["res"]), "--annotations", str(files["gt"]),
                         "--out", str(tmp_path / "out")]) == 2
    assert "openjdk" in capsys.readouterr().err
    broken = tmp_path / "java"
    broken.write_text("#!/bin/sh\necho 'no JVM here' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(JavaNotFoundError, match=r"-version` failed \(exit 1\): no JVM here"):
        require_java()


def test_spice_without_its_jars_fails_up_front(tmp_path: Path, monkeypatch, files) -> None:
    monkeypatch.setattr(spice_module, "SPICE_DIR", tmp_path)
    with pytest.raises(SpiceUnavailableError, match=r"stanford-corenlp-3\.6\.0\.jar.*never downloads.*without --spice"):
        score_captions(files["res"], files["gt"], spice=True)


def test_references_loader_keeps_order_and_rejects_broken_files(tmp_path: Path, files) -> None:
    assert load_references(files["gt"]) == REFERENCES
    assert list(load_references(files["gt"])) == [42, 7, 1001, 3]
    broken = _gt(REFERENCES)
    broken["annotations"].append({"id": 99, "image_id": 5, "caption": "x"})
    (tmp_path / "a.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="image_id 5 is not in 'images'"):
        load_references(tmp_path / "a.json")
    no_refs = _gt(REFERENCES)
    no_refs["images"].append({"id": 8})
    (tmp_path / "b.json").write_text(json.dumps(no_refs))
    with pytest.raises(ValueError, match="no reference caption: 8"):
        load_references(tmp_path / "b.json")


def test_results_writer_is_the_official_format(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "r.json"
    write_results([{"image_id": 1, "caption": "a b", "extra": 0}, {"image_id": 2, "caption": "c"}], out)
    assert json.loads(out.read_text()) == [{"image_id": 1, "caption": "a b"}, {"image_id": 2, "caption": "c"}]
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temp file left behind
    with pytest.raises(ValueError, match="duplicate image_id 1"):
        write_results([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}], out)
