"""The docs hold together: every relative link lands on a file, every anchor on a heading.

Checked on the README, ``SECURITY.md`` and every page under ``docs/``, with GitHub's rules for a
heading's anchor (lower-cased, spaces to ``-``, punctuation other than ``-`` and ``_`` dropped, a
repeated heading suffixed ``-1``, ``-2``...). Links inside code (fenced blocks, inline spans) are
not links. And the README stays a front page: short, pointing at every page of ``docs/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.servers import ROOT

README = ROOT / "README.md"
PAGES = [README, ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
FRONT_PAGE_LINES = 200

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) or ![alt](target), an optional "title" after the target
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks, with inline code spans blanked."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(_CODE_SPAN.sub("code", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page (repeats suffixed as GitHub does)."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = _HEADING.match(line)
        if fenced or not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(text: str) -> list[str]:
    """Every link target of a page's prose (code is not prose)."""
    return _LINK.findall("\n".join(prose(text)))


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with ``page``'s relative links: missing files, anchors with no heading."""
    wrong = []
    for target in links(page.read_text()):
        if not target or _SCHEME.match(target):
            continue  # a web address (or mailto:) is not ours to check here
        path, _, anchor = unquote(target).partition("#")
        dest = (page.parent / path).resolve() if path else page
        name = f"{page.relative_to(root)}: {target}"
        if not dest.exists():
            wrong.append(f"{name}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            wrong.append(f"{name}: no heading #{anchor} in {dest.name}")
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert page.exists(), page
    wrong = broken(page)
    assert not wrong, "\n".join(wrong)


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < FRONT_PAGE_LINES, f"README.md: {len(lines)} lines; reference goes in docs/"
    linked = {(ROOT / unquote(t).partition("#")[0]).resolve() for t in links("\n".join(lines))}
    unlisted = [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not unlisted, f"docs pages the README does not link: {unlisted}"


def test_slugs_follow_githubs_rules() -> None:
    assert slug("Scale to zero: `ember up`") == "scale-to-zero-ember-up"
    assert slug("The v2 surface") == "the-v2-surface"
    assert slug("A [linked](x.md) heading_with-marks!") == "a-linked-heading_with-marks"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_the_checker_sees_broken_links(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# Here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n[ok](there.md#here) [self](#top) [web](https://example.com/x#y)\n"
        "`[in code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](missing.md) [bad anchor](there.md#nope) [bad self](#nope)\n"
    )
    assert links(page.read_text()) == [
        "there.md#here",
        "#top",
        "https://example.com/x#y",
        "missing.md",
        "there.md#nope",
        "#nope",
    ]
    assert [w.split(": ")[1] for w in broken(page, tmp_path)] == [
        "missing.md",
        "there.md#nope",
        "#nope",
    ]


PACKAGES = ("contracts", "weight_cache", "runtime", "activator", "analysis", "knative", "ember")


def test_the_architecture_page_names_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    unnamed = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.stem not in ("__init__", "__main__") and f"`{path.stem}" not in page
    ]
    assert not unnamed, f"docs/architecture.md does not name: {', '.join(unnamed)}"
