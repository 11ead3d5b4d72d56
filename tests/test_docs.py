"""The documentation holds together: a short README that reaches every page, and no
link or code path that leads nowhere (checked offline, on the files themselves)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
#: Pages whose links and code paths are checked.
PAGES = [README, *DOCS, ROOT / "CHANGELOG.md", ROOT / "dashboards" / "README.md"]
README_MAX_CHARS = 12_000

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
#: Repository paths named in code, e.g. `detector/transport/wire.py`.
_REPO_PATH = re.compile(
    r"(?<![\w./-])((?:detector|replay|bench|tests|configs|dashboards|docs|scripts)/[\w./-]*)"
)
_MODULE = re.compile(r"(?<![\w.])(detector(?:\.\w+)+)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks: a `[x](y)` in an example is not a link."""
    return _FENCE.sub("", text)


def links(path: Path) -> list[str]:
    return _LINK.findall(_CODE_SPAN.sub("", _prose(path.read_text(encoding="utf-8"))))


def relative_links(path: Path) -> list[str]:
    return [t for t in links(path) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_prose(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8"))
    assert n <= README_MAX_CHARS, f"README.md has {n} characters, over {README_MAX_CHARS}"


def test_readme_links_every_docs_page() -> None:
    assert DOCS, "docs/ holds no page"
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in relative_links(README)}
    missing = [p.relative_to(ROOT).as_posix() for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


#: Placeholders the docs use as examples, not files.
EXAMPLE_PATHS = {"tests/test_x.py"}


def _code(page: Path) -> list[str]:
    """Code spans, fenced blocks and indented blocks: where the docs name paths."""
    text = page.read_text(encoding="utf-8")
    fenced = [m.group(0) for m in _FENCE.finditer(text)]
    indented = re.findall(r"^(?: {4}|\t)(.+)$", _prose(text), re.M)
    return _CODE_SPAN.findall(text) + fenced + indented


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_paths_exist(page: Path) -> None:
    """Files and modules the docs name in code exist: a module that moved leaves no
    page pointing at its old place."""
    stale = []
    for code in _code(page):
        for path in _REPO_PATH.findall(code):
            path = path.rstrip(".")
            if path not in EXAMPLE_PATHS and not (ROOT / path).exists():
                stale.append(path)
        stale += [m for m in _MODULE.findall(code) if not _module_exists(m)]
    assert not stale, f"{page.relative_to(ROOT)} names what does not exist: {sorted(set(stale))}"


def _module_exists(dotted: str) -> bool:
    """``detector.a.b[.attribute]``: the package ``detector.a`` and, past it, at most
    one name that is not a module (a function or class in it)."""
    parts = dotted.split(".")
    found = 1
    for i in range(2, len(parts) + 1):
        where = ROOT.joinpath(*parts[:i])
        if where.with_suffix(".py").exists() or (where / "__init__.py").exists():
            found = i
        else:
            break
    return found >= 2 and len(parts) - found <= 1
