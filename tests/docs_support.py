"""Markdown as GitHub renders it, for the docs and alert-rule tests: headings' anchors, links.

Not a test module.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

from testing_support.stages import REPO_ROOT

DOCS_DIR = REPO_ROOT / "docs"
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(text: str) -> List[Tuple[int, str]]:
    """The numbered lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> Set[str]:
    """Every heading anchor of a Markdown page (repeats numbered -1, -2, ... as GitHub does)."""
    seen: Dict[str, int] = {}
    found = set()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> List[Tuple[int, str]]:
    """Every link and image target outside code: (line number, target)."""
    found = []
    for number, line in prose_lines(text):
        without_code = re.sub(r"`[^`]*`", "", line)
        for match in LINK.finditer(without_code):
            found.append((number, match.group(1)))
    return found


def broken_links(page: Path) -> List[str]:
    """Relative links of a page whose file or anchor does not exist, as readable lines."""
    problems = []
    for number, target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        name = page.relative_to(REPO_ROOT) if page.is_relative_to(REPO_ROOT) else page.name
        where = f"{name}:{number}: {target}"
        if not linked.exists():
            problems.append(f"{where}: no such file")
        elif anchor and (linked.suffix != ".md"
                         or anchor not in anchors(linked.read_text(encoding="utf-8"))):
            problems.append(f"{where}: no such anchor")
    return problems
