"""A newcomer can find every page and every link leads somewhere.

Every page of docs/ is linked from where a newcomer starts (README.md or
docs/architecture.md), and every relative link in README.md and docs/ names a
file that exists and, with an anchor, a heading of that page (GitHub's slugs).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m[1] or "", heading.strip().lower())
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        base = slug(line.lstrip("#"))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_slugs_are_githubs() -> None:
    assert slug("The voice · Giọng nói") == "the-voice--giọng-nói"
    assert slug("Presence: `state`") == "presence-state"
    assert slug("13. Still to come") == "13-still-to-come"


def test_every_docs_page_is_linked_from_where_a_newcomer_starts() -> None:
    starts = [REPO / "README.md", DOCS / "architecture.md"]
    linked = {(start.parent / t.split("#")[0]).resolve() for start in starts
              for t in links(start)}
    pages = [*DOCS.glob("*.md"), *DOCS.glob("*.yaml")]
    missing = [p.name for p in pages if p.resolve() not in linked and p.name != "architecture.md"]
    assert not missing, f"no link from README.md or docs/architecture.md to {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        missing_anchor = bool(anchor) and dest.suffix == ".md" and anchor not in anchors(dest)
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_readme_names_the_makefile_targets_and_only_those() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    phony = set(re.search(r"^\.PHONY: (.*)$", makefile, re.M)[1].split())
    internal = {"setup", "apt-packages", "clean"}  # run by the others, or housekeeping
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`make ([a-z-]+)", readme))
    assert named <= phony, named - phony
    assert phony - internal <= named, (phony - internal) - named


def test_architecture_names_every_module() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    package = REPO / "firmware" / "diemcau"
    modules = [p for folder in ("protocol", "core", "adapters") for p in (package / folder).glob(
        "*.py") if p.name != "__init__.py"] + [package / "shared.py"]
    assert len(modules) > 20
    missing = [f"{p.parent.name}/{p.name}" for p in modules if f"`{p.name}`" not in text]
    assert not missing, f"docs/architecture.md does not say what these are: {missing}"
