"""What every score report and score command shares: a JSON for machines and a Markdown page for people, both carrying what makes a
number comparable. Each task's report writer sits with its scorer (eval/caption.py, eval/scienceqa.py).

Every report states how many items were scored out of how many (a subset is marked SUBSET in the title, the JSON
and the per-item file) and the decoding settings the outputs were generated with (batch size included: greedy
output can depend on it through padding).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path


def score_parser(prog: str, description: str, help: str, unit: str) -> tuple[argparse.ArgumentParser,
                                                                          argparse.ArgumentParser]:
    """A scorer's command line `python -m eval.<task> score ...`: (the parser, its `score` subcommand, which takes
    the options every report has: --allow-subset and --out)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    score = parser.add_subparsers(dest="command", required=True).add_parser("score", help=help)
    score.add_argument("--allow-subset", action="store_true",
                       help=f"score only the {unit} in the outputs; every output is marked SUBSET n/N")
    score.add_argument("--out", type=Path, required=True, help="report directory")
    return parser, score


def subset_banner(subset: bool, coverage: str, unit: str) -> str:
    """The line that tells a reader whether a number is comparable with full-split results."""
    if subset:
        return (f"SUBSET: {coverage} {unit} scored; not comparable with numbers on the full split "
                "(for captions, CIDEr's IDF comes from the scored images)")
    return f"Full split: {coverage} {unit} scored"


def decoding_section(decoding: Mapping[str, object] | None) -> list[str]:
    """The Markdown section of the decoding settings the outputs were generated with."""
    if decoding is None:
        return ["## Decoding settings", "",
                "Not recorded (no generation metadata was given): this number cannot be reproduced as reported.", ""]
    return ["## Decoding settings", "", "| setting | value |", "| --- | --- |",
            *(f"| {k} | {v} |" for k, v in decoding.items()), ""]


def sources_section(sources: Mapping[str, str], java: str | None) -> list[str]:
    """The Markdown section of the files (and the Java) a score was made from."""
    lines = ["## Sources", "", *(f"- {k}: `{v}`" for k, v in sources.items())]
    if java:
        lines.append(f"- java: {java}")
    return [*lines, ""]
