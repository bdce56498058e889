"""The docs a newcomer reads hold no unfinished drafts and no links to files that do not exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", *REPO.glob("docs/**/*.md"), *REPO.glob("models/*/README.md")])
# Markers a writer leaves for "fill in later"; a finished page has none.
UNFINISHED = re.compile(r"\b(?:[A-Z0-9_]*PLACEHOLDER[A-Z0-9_]*|TBD|FIXME)\b")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _relative_links(text: str):
    for target in LINK.findall(text):
        if "://" not in target and not target.startswith("mailto:"):
            yield target


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_page_has_no_unfinished_marker(page):
    found = [(n, m.group(0)) for n, line in enumerate(page.read_text().splitlines(), 1)
             for m in UNFINISHED.finditer(line)]
    assert not found, f"{page.relative_to(REPO)}: unfinished text at line(s) {found}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_files_in_the_repository(page):
    missing = sorted({t for t in _relative_links(page.read_text()) if not (page.parent / t).exists()})
    assert not missing, f"{page.relative_to(REPO)}: links to missing files {missing}"


def test_the_markers_are_found():
    assert UNFINISHED.search("see SEED1_PLACEHOLDER here") and UNFINISHED.search("(TBD)")
    assert not UNFINISHED.search("placeholders are fine in prose, so is tbd")
    assert list(_relative_links("[a](docs/X.md#part) [b](https://x.org/y) [c](../r.png)")) == ["docs/X.md", "../r.png"]
