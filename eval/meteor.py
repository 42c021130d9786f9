"""pycocoevalcap's METEOR in a helper process that starts first and scores while BLEU, ROUGE-L and CIDEr run here.

METEOR is the slow metric: its JVM spends seconds loading the paraphrase table, then answers one image at a time.
`COCOEvalCap` starts that JVM only after tokenising and then waits for it. Here a small helper process constructs
pycocoevalcap's own `Meteor` at once (so the JVM loads while the captions are tokenised), receives the tokenised
captions when they are ready, and returns `Meteor.compute_score`'s result: the same code on the same strings, so
the same numbers (JSON carries floats exactly). Being a process, not a thread, its line-by-line exchange with the
JVM never waits for this interpreter's lock while the other scorers run here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

# The helper imports nothing from this project, so it runs the same from any checkout or working directory. If the
# JVM dies, `compute_score` raises with its lock held and `Meteor.__del__` would wait for that lock forever, so the
# helper stops the JVM, reports the JVM's last words on one line and exits without running finalizers.
HELPER_SOURCE = """
import json, os, sys
from pycocoevalcap.meteor.meteor import Meteor
meteor = Meteor()  # starts the JVM, which loads its paraphrase table while the request is prepared
request = json.load(sys.stdin)
gts = dict(enumerate(request["references"]))
res = {k: [caption] for k, caption in enumerate(request["candidates"])}
try:
    result = meteor.compute_score(gts, res)
except Exception as error:
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()
    jvm = meteor.meteor_p.stderr.read().decode(errors="replace").split(chr(10))
    last_words = " / ".join(line.strip() for line in jvm if line.strip())[-1000:]
    sys.stderr.write(f"{type(error).__name__}: {error}; the JVM said: {last_words or 'nothing'}" + chr(10))
    sys.stderr.flush()
    os._exit(1)
json.dump(result, sys.stdout)
"""
HELPER_COMMAND = (sys.executable, "-c", HELPER_SOURCE)


class MeteorError(RuntimeError):
    """The METEOR helper (or its JVM) failed."""


class MeteorProcess:
    """Start METEOR (construction returns at once), `submit` the tokenised captions when they are ready, do other
    work, then take `result()`. Use it as a context manager: the helper and its JVM are always stopped."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._stderr = tempfile.TemporaryFile(dir=workdir)  # anonymous: gone when closed
        self._proc = subprocess.Popen(
            HELPER_COMMAND, cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            start_new_session=True,  # the helper and its JVM form one process group, stopped together
        )
        self._image_ids: list[int] | None = None

    def submit(self, gts: Mapping[int, Sequence[str]], res: Mapping[int, Sequence[str]]) -> None:
        """Hand over the captions (one candidate per image, scored in `gts` order, as pycocoevalcap requires)."""
        if gts.keys() != res.keys() or any(len(res[i]) != 1 for i in gts):
            raise ValueError("METEOR needs the same image ids in gts and res and exactly one candidate per image")
        if self._image_ids is not None:
            raise RuntimeError("MeteorProcess scores one set of captions; start another process for another set")
        self._image_ids = list(gts)
        request = {"references": [list(gts[i]) for i in gts], "candidates": [res[i][0] for i in gts]}
        try:
            self._proc.stdin.write(json.dumps(request).encode())
            self._proc.stdin.close()
        except BrokenPipeError:
            raise self._failed() from None

    def result(self) -> tuple[float, list[float]]:
        """Corpus METEOR and the per-image scores in `gts` order, as `Meteor.compute_score` returns them."""
        if self._image_ids is None:
            raise RuntimeError("nothing was submitted")
        output = self._proc.stdout.read()
        if self._proc.wait() != 0:
            raise self._failed()
        score, scores = json.loads(output)
        if len(scores) != len(self._image_ids):
            raise MeteorError(f"METEOR returned {len(scores)} scores for {len(self._image_ids)} images")
        return float(score), [float(s) for s in scores]

    def _failed(self) -> MeteorError:
        """The helper's last stderr line (its one-line report, or a traceback's last line), as one line."""
        code = self._proc.wait()
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return MeteorError(f"the METEOR helper (pycocoevalcap's Meteor, `java -jar meteor-1.5.jar`) exited with "
                           f"code {code}: {lines[-1] if lines else 'no message'}")

    def close(self) -> None:
        """Stop the helper and its JVM; safe to call twice. A helper that finished has stopped its JVM itself
        (`Meteor.__del__`); one still running is killed with its process group (its pid is still ours then)."""
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout, self._stderr):
            try:
                stream.close()
            except BrokenPipeError:
                pass

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
