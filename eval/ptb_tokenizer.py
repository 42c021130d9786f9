"""pycocoevalcap's PTB tokenisation, with its temporary file in a directory we choose.

`PTBTokenizer.tokenize` writes its input file into the pycocoevalcap install folder, which fails on read-only or
shared installs. This runs the same Java command on the same bytes and applies the same punctuation filter, so
the tokens are identical; only the temp file's location differs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pycocoevalcap.tokenizer import ptbtokenizer as _ptb

from eval.files import format_ids

CORENLP_JAR = Path(_ptb.__file__).resolve().with_name(_ptb.STANFORD_CORENLP_3_4_1_JAR)


def ptb_tokenize(groups: Sequence[Mapping[int, Sequence[str]]], workdir: Path) -> list[dict[int, list[str]]]:
    """Lower-case, PTB-tokenise and strip punctuation from every caption, keeping the key and caption order.

    Each group (the references, the candidates) gets its own tokenizer process on its own file, so that every file,
    its end included, is the one pycocoevalcap tokenises. The processes run at the same time and write to files,
    not pipes, so that none waits for another's output to be read.
    """
    runs: list[_Run] = []
    try:
        for captions in groups:
            runs.append(_start(captions, workdir))
        return [_finish(run) for run in runs]
    finally:
        for run in runs:
            run.close()


@dataclass
class _Run:
    """One PTBTokenizer process, its input file (removed on close) and its output files (anonymous)."""

    captions: Mapping[int, Sequence[str]]
    proc: subprocess.Popen
    input_path: str
    stdout: IO[bytes]
    stderr: IO[bytes]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.remove(self.input_path)
        self.stdout.close()
        self.stderr.close()


def _start(captions: Mapping[int, Sequence[str]], workdir: Path) -> _Run:
    sentences = "\n".join(c.replace("\n", " ") for v in captions.values() for c in v)
    with tempfile.NamedTemporaryFile(delete=False, dir=workdir) as tmp:
        tmp.write(sentences.encode())
    stdout, stderr = tempfile.TemporaryFile(dir=workdir), tempfile.TemporaryFile(dir=workdir)
    try:
        proc = subprocess.Popen(
            ["java", "-cp", str(CORENLP_JAR), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", os.path.basename(tmp.name)],
            cwd=workdir, stdout=stdout, stderr=stderr,
        )
    except OSError:
        os.remove(tmp.name)
        stdout.close()
        stderr.close()
        raise
    return _Run(captions, proc, tmp.name, stdout, stderr)


def _finish(run: _Run) -> dict[int, list[str]]:
    returncode = run.proc.wait()
    run.stdout.seek(0)
    run.stderr.seek(0)
    if returncode != 0:
        stderr = run.stderr.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"PTBTokenizer failed (exit {returncode}): {stderr}")
    lines = run.stdout.read().decode().split("\n")
    captions = run.captions
    image_ids = [k for k, v in captions.items() for _ in v]
    # pycocoevalcap zips ids with output lines and would silently misalign if a caption became two lines.
    if len(lines) < len(image_ids) or any(lines[len(image_ids):]):
        suspects = [k for k, v in captions.items() if any(len(c.replace("\n", " ").splitlines()) > 1 for c in v)]
        raise ValueError(
            f"PTBTokenizer returned {len(lines)} lines for {len(image_ids)} captions: a caption contains a line "
            f"break other than '\\n' (e.g. '\\r'; image ids: {format_ids(suspects) or 'unknown'}). pycocoevalcap "
            "would silently shift every later caption onto the wrong image; normalise the captions' whitespace"
        )
    tokenized: dict[int, list[str]] = {}
    for k, line in zip(image_ids, lines):
        words = [w for w in line.rstrip().split(" ") if w not in _ptb.PUNCTUATIONS]
        tokenized.setdefault(k, []).append(" ".join(words))
    return tokenized
