"""Opt-in SPICE, run without touching the pycocoevalcap install folder and without downloading anything.

pycocoevalcap's `Spice()` downloads Stanford CoreNLP 3.6.0 on first use and writes `tmp/` and `cache/` into its
package folder. Here the CoreNLP jars must already be in place (we fail with instructions otherwise), the
input/output files live in a work directory, and the LMDB/FST cache is not used (it is where SPICE breaks on long
sentences and, reportedly, on Java >= 9).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocoevalcap.spice import spice as _spice

SPICE_DIR = Path(_spice.__file__).resolve().parent
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class SpiceUnavailableError(OSError):
    """SPICE was asked for but cannot run here (its CoreNLP jars are missing)."""


def require_spice_jars() -> None:
    """Fail before any scoring starts if SPICE's CoreNLP jars are missing, saying where to put them."""
    lib = SPICE_DIR / "lib"
    missing = [name for name in CORENLP_JARS if not (lib / name).is_file()]
    if missing:
        raise SpiceUnavailableError(
            f"SPICE needs {', '.join(missing)} in {lib}. pycocoevalcap would download them from nlp.stanford.edu "
            "at first use; this evaluator never downloads. Take both jars from stanford-corenlp-full-2015-12-09.zip "
            "(or Maven Central: edu.stanford.nlp:stanford-corenlp:3.6.0 and its 'models' classifier jar) and copy "
            f"them into {lib}, or score without --spice. SPICE is known to fail on Java >= 9."
        )


def spice_score(
    gts: Mapping[int, Sequence[str]], res: Mapping[int, Sequence[str]], workdir: Path
) -> tuple[float, list[float]]:
    """Corpus SPICE (mean of per-image F-scores, NaN-propagating as in pycocoevalcap) and per-image F in gts order."""
    require_spice_jars()
    in_file, out_file = workdir / "spice_in.json", workdir / "spice_out.json"
    in_file.write_text(json.dumps([{"image_id": i, "test": res[i][0], "refs": list(gts[i])} for i in sorted(gts)]))
    cmd = ["java", "-jar", "-Xmx8G", str(SPICE_DIR / _spice.SPICE_JAR), str(in_file),
           "-out", str(out_file), "-subset", "-silent"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SpiceUnavailableError(
            f"SPICE failed (exit {proc.returncode}); it is known to need Java 8. stderr: {proc.stderr[-2000:]}"
        )
    by_id = {item["image_id"]: _float(item["scores"]["All"]["f"]) for item in json.loads(out_file.read_text())}
    scores = [by_id[i] for i in gts]
    return float(np.mean(np.array([by_id[i] for i in sorted(gts)]))), scores


def _float(value: object) -> float:
    """SPICE writes null/NaN for images it could not parse; pycocoevalcap turns those into NaN."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
