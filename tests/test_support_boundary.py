"""Who may import whom outside the pipeline: tests and benchmarks share testing_support/ and
never import each other; testing_support imports neither; the pipeline imports none of them."""
from __future__ import annotations

import ast
from typing import List, Tuple

import pytest

from testing_support.stages import REPO_ROOT

FORBIDDEN = {
    "tests": ("benchmarks",),
    "benchmarks": ("tests",),
    "testing_support": ("tests", "benchmarks"),
    "pipeline": ("tests", "benchmarks", "testing_support"),
}


def imported(source: str) -> List[Tuple[int, str]]:
    """Every absolute module a source imports, with its line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def crossings(source: str, forbidden: Tuple[str, ...]) -> List[Tuple[int, str]]:
    """The imports of a source that reach into one of the ``forbidden`` packages."""
    return [(line, module) for line, module in imported(source)
            if module.split(".")[0] in forbidden]


def test_the_check_sees_a_crossing() -> None:
    source = "import os\nfrom benchmarks.scoring import goal\nimport tests.conftest as c\n"
    assert crossings(source, ("tests", "benchmarks")) == [
        (2, "benchmarks.scoring"), (3, "tests.conftest")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_what_it_must_not(package: str) -> None:
    found = [f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
             for path in sorted((REPO_ROOT / package).rglob("*.py"))
             for line, module in crossings(path.read_text(), FORBIDDEN[package])]
    assert found == []
