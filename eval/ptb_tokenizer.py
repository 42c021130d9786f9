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
from pathlib import Path

from pycocoevalcap.tokenizer import ptbtokenizer as _ptb

from mm_excitor.cli import format_ids

CORENLP_JAR = Path(_ptb.__file__).resolve().with_name(_ptb.STANFORD_CORENLP_3_4_1_JAR)


def ptb_tokenize(captions: Mapping[int, Sequence[str]], workdir: Path) -> dict[int, list[str]]:
    """Lower-case, PTB-tokenise and strip punctuation from every caption, keeping the key and caption order."""
    image_ids = [k for k, v in captions.items() for _ in v]
    sentences = "\n".join(c.replace("\n", " ") for v in captions.values() for c in v)
    with tempfile.NamedTemporaryFile(delete=False, dir=workdir) as tmp:
        tmp.write(sentences.encode())
    try:
        proc = subprocess.run(
            ["java", "-cp", str(CORENLP_JAR), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", os.path.basename(tmp.name)],
            cwd=workdir, capture_output=True, check=False,
        )
    finally:
        os.remove(tmp.name)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"PTBTokenizer failed (exit {proc.returncode}): {stderr}")
    lines = proc.stdout.decode().split("\n")
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
