"""Every file the documentation names exists: relative Markdown links, and repository paths written in backticks
(`bench/compare.py`), in every Markdown file of the repository. Renaming a module without its docs fails here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("bench", "configs", "data", "docs", "eval", "experiments", "mm_excitor", "notebooks", "tasks", "tests")
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:%s)/[A-Za-z0-9_./-]+\.(?:py|md|json|jsonl|yaml|sh|ipynb|png|txt))`" % "|".join(TOP_LEVEL))


def markdown_files() -> list[Path]:
    skipped = {".venv", ".cache", "runs", ".git", "node_modules"}
    return sorted(p for p in REPO.rglob("*.md") if not skipped & set(p.relative_to(REPO).parts))


def named_paths(doc: Path) -> list[tuple[str, Path]]:
    """(as written, resolved path) of every local file the document names."""
    text = doc.read_text(encoding="utf-8")
    named = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        named.append((target, (doc.parent / target.split("#")[0]).resolve()))
    named += [(path, REPO / path) for path in CODE_PATH.findall(text)]
    return named


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_named_file_exists(doc: Path) -> None:
    missing = [written for written, path in named_paths(doc) if not path.exists()]
    assert not missing, f"{doc.relative_to(REPO)} names files that do not exist: {missing}"


def test_the_readme_fits_a_newcomers_screen() -> None:
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
