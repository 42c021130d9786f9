"""pycocoevalcap's METEOR 1.5, started before the captions are ready and fed without a round trip per image.

METEOR is the slow metric: its JVM spends seconds loading the paraphrase table, then scores one image at a time.
`pycocoevalcap.meteor.Meteor` writes an image's `SCORE` line and waits for its statistics before writing the
next. Here the same jar runs with the same command and receives the same lines, but a writer thread streams all of
them while a reader thread collects the answers, so the JVM never waits for Python and Python (BLEU, ROUGE-L,
CIDEr) never waits for the JVM. The statistics of a line depend only on that line, and the final `EVAL` line is
the one pycocoevalcap builds, so the scores are the same.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from pycocoevalcap.meteor import meteor as _meteor

METEOR_DIR = Path(_meteor.__file__).resolve().parent
# pycocoevalcap's own command line (Meteor.__init__), run from the jar's folder so that it finds its data.
METEOR_COMMAND = ("java", "-jar", "-Xmx2G", _meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm")


class MeteorError(RuntimeError):
    """The METEOR process stopped or answered something that is not a score."""


def score_line(hypothesis: str, references: Sequence[str]) -> str:
    """The `SCORE` request for one image, byte for byte as `Meteor._stat` writes it."""
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis))


class MeteorProcess:
    """One METEOR JVM: start it first (construction returns at once), `submit` the tokenised captions when they are
    ready, do other work, then take `result()`. Use it as a context manager so that the JVM always stops."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._stderr = tempfile.TemporaryFile(dir=workdir)  # anonymous: gone when closed
        self._proc = subprocess.Popen(
            METEOR_COMMAND, cwd=METEOR_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="meteor")
        self._pending: Future[tuple[float, list[float]]] | None = None

    def submit(self, gts: Mapping[int, Sequence[str]], res: Mapping[int, Sequence[str]]) -> None:
        """Start scoring (one candidate per image, in `gts` order, as pycocoevalcap requires); returns at once."""
        if gts.keys() != res.keys() or any(len(res[i]) != 1 for i in gts):
            raise ValueError("METEOR needs the same image ids in gts and res and exactly one candidate per image")
        if self._pending is not None:
            raise RuntimeError("MeteorProcess scores one set of captions; start another process for another set")
        requests = "".join(score_line(res[i][0], gts[i]) + "\n" for i in gts).encode()
        written = self._threads.submit(self._write, requests)
        self._pending = self._threads.submit(self._exchange, len(gts), written)

    def result(self) -> tuple[float, list[float]]:
        """Corpus METEOR and the per-image scores in `gts` order, as `Meteor.compute_score` returns them."""
        if self._pending is None:
            raise RuntimeError("nothing was submitted")
        return self._pending.result()

    def _exchange(self, n_images: int, written: Future[None]) -> tuple[float, list[float]]:
        stats = [self._readline() for _ in range(n_images)]
        written.result()  # every SCORE line is in (the JVM has answered them all); now the EVAL line
        self._write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        scores = [self._read_float() for _ in range(n_images)]
        return self._read_float(), scores

    def _write(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: stdin already closed by close()
            raise self._died() from None

    def _readline(self) -> str:
        line = self._proc.stdout.readline()
        if not line:
            raise self._died()
        return line.decode().strip()

    def _read_float(self) -> float:
        line = self._readline()
        try:
            return float(line)
        except ValueError:
            raise MeteorError(f"METEOR answered {line[:200]!r} where a score was expected") from None

    def _died(self) -> MeteorError:
        code = self._proc.wait(timeout=30)
        self._stderr.seek(0)
        stderr = self._stderr.read().decode(errors="replace").strip()[-2000:]
        return MeteorError(f"the METEOR process ({' '.join(METEOR_COMMAND)}) exited with code {code}: {stderr}")

    def close(self) -> None:
        """Stop the JVM and the threads; safe to call twice. pycocoevalcap leaves its JVM to garbage collection."""
        self._proc.kill()
        self._proc.wait()
        self._threads.shutdown(wait=True)  # the threads' reads and writes fail at once on the dead pipes
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except BrokenPipeError:
                pass
        self._stderr.close()

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

