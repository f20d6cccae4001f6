"""The user-facing documents stay short and whole: the README fits in 300 lines, and every relative
link (and #anchor) in README.md, CHANGELOG.md and docs/*.md resolves to a file and heading of this
repository. Nothing here reads a model; it is plain text checking."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 300

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The text without code blocks and code spans, where a bracket is not a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, backticks dropped, lower case, characters
    other than letters, digits, '_', '-' and spaces removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")  # GitHub numbers repeated headings
    return anchors


def _relative_links(path: Path) -> list[str]:
    return [target for target in _LINK.findall(_prose(path.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not files


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it to {README_MAX_LINES} and move detail to docs/")


def test_link_checker_reads_links_and_anchors_as_github_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# The report (`recall_report.json`)\n\n## Speed & memory\n\n## Speed & memory\n"
                    "See [a](other.md#x), ![b](figures/f.png), [c](https://example.org), `[d](no.md)`.\n"
                    "```\n[e](nor.md)\n```\n", encoding="utf-8")
    assert _anchors(page) == {"the-report-recall_reportjson", "speed--memory", "speed--memory-1"}
    assert _relative_links(page) == ["other.md#x", "figures/f.png"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(document):
    broken = []
    for target in _relative_links(document):
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.is_relative_to(REPO):
            broken.append(f"{target}: points outside the repository")
        elif not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.relative_to(REPO)}")
    assert not broken, f"{document.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_documents_cite_no_file_outside_the_repository(document):
    """Background notes kept outside the repository are not there for a user to open."""
    text = document.read_text(encoding="utf-8")
    # The names are assembled, not spelled, so this file itself names nothing outside the repository.
    outside = ["_".join(["RECALL", "METHOD"]) + ".md", "DES" + "IGN.md", "_".join(["OFFLINE", "ASSETS"]) + ".md",
               "/".join(["shared", "docs"])]
    for name in outside:
        assert name not in text, f"{document.relative_to(REPO)} mentions {name}"
