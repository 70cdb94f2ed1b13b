"""The docs stay true to the code and to each other: the CLI reference is what click says now, every
relative link and #anchor resolves, and the README stays a front page."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md")), ROOT / "benchmarks" / "README.md"]
README_MAX_LINES = 250
REGENERATE = ".venv/bin/python scripts/cli_reference.py --write"

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ')'
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+).*?\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def reference_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of a Markdown file outside fenced code blocks, with inline code removed."""
    out: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, CODE_SPAN.sub("", line)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped except '-' and '_',
    spaces to '-'. Link targets and emphasis count as their text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every #anchor a file's headings make, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in _heading_lines(path):
        base = slug(line)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _heading_lines(path: Path) -> list[tuple[int, str]]:
    fenced = False
    out: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            out.append((number, m.group(2)))
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in prose_lines(path):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
                continue
            links.append((number, target))
    return links


def test_the_pages_exist() -> None:
    for page in PAGES:
        assert page.is_file(), f"{page.relative_to(ROOT)} is missing"


def test_cli_reference_is_what_click_says_now() -> None:
    expected = reference_script().render()
    actual = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert actual == expected, (
        "docs/cli.md is out of date with the click commands (a command, option or help text changed). "
        f"Regenerate it: {REGENERATE}"
    )


def test_the_reference_lists_every_command_and_exit_code() -> None:
    from torchship.cli import base, cli

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name in cli.commands:
        assert f"### torchship {name}\n" in text
    for _, code in getattr(base, "EXIT_CODES", []):
        assert f"\n| {code} |" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for number, target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading makes #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in relative_links(README) if t.partition("#")[0]}
    missing = [p.relative_to(ROOT) for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not missing, f"README.md links none of: {missing}"


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; at most {README_MAX_LINES}: move the depth into docs/"
    )


def test_the_link_checker_catches_what_it_should(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top\n## The `flow`: step 1, step_2!\n## Top\n", encoding="utf-8")
    assert anchors(tmp_path / "a.md") == {"top", "the-flow-step-1-step_2", "top-1"}
    page = tmp_path / "b.md"
    page.write_text(
        "[x](a.md#top) ![y](pic.png) [z](https://x.org/a)\n```\n[no](nowhere.md)\n```\n"
        "`[no](nowhere.md)` [w](#local)\n",
        encoding="utf-8",
    )
    assert relative_links(page) == [(1, "a.md#top"), (1, "pic.png"), (5, "#local")]
