"""Helpers for the deployment tests: bodywork.yaml, requirement pins and what a stage imports."""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, FrozenSet, Iterable, Set, Tuple

import yaml

from testing_support.stages import REPO_ROOT

BODYWORK_YAML = REPO_ROOT / "bodywork.yaml"
REQUIREMENTS_PIPE = REPO_ROOT / "requirements_pipe.txt"


def load_yaml(path: Path) -> Dict[str, Any]:
    """A YAML file parsed with the safe loader (as Bodywork does)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def bodywork_config() -> Dict[str, Any]:
    """The parsed bodywork.yaml."""
    return load_yaml(BODYWORK_YAML)


def load_script(name: str) -> ModuleType:
    """A module from scripts/ (not a package), loaded by path."""
    path = REPO_ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def canonical(name: str) -> str:
    """A project name in PEP 503 normal form."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports_of(path: Path) -> Set[str]:
    """Every absolute module name a file imports (function-level imports too) or reads data
    from with ``importlib.resources.files("package")``."""
    names: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
                and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) == "files"
                and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_file(name: str) -> Path:
    """The file of a pipeline module or package, or a path that does not exist."""
    relative = Path(*name.split("."))
    package = REPO_ROOT / relative / "__init__.py"
    return package if package.exists() else (REPO_ROOT / relative).with_suffix(".py")


def third_party_imports(stage_file: Path) -> Set[str]:
    """Top-level non-stdlib modules a stage imports, following pipeline.* imports transitively."""
    seen: Set[Path] = set()
    pending = [stage_file]
    found: Set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports_of(path):
            top = name.split(".")[0]
            if top == "pipeline":
                target = _module_file(name)
                if target.exists():
                    pending.append(target)
                if target.name == "__init__.py" or name.count("."):
                    parent = _module_file(name.rsplit(".", 1)[0])
                    if parent.exists():
                        pending.append(parent)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


def distributions_of(modules: Iterable[str]) -> Set[str]:
    """The installed distributions providing top-level modules (canonical names)."""
    from importlib.metadata import packages_distributions

    mapping = packages_distributions()
    dists: Set[str] = set()
    for module in modules:
        assert module in mapping, f"no installed distribution provides module {module!r}"
        dists.update(canonical(d) for d in mapping[module])
    return dists


def _name_and_extras(requirement: str) -> Tuple[str, Set[str]]:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", requirement)
    assert match, f"not a requirement: {requirement!r}"
    extras = {e.strip().lower() for e in (match.group(2) or "").split(",") if e.strip()}
    return canonical(match.group(1)), extras


def dependency_closure(requirements: Iterable[str]) -> Set[str]:
    """Installed distributions that requirements pull in (requested extras only), canonical."""
    from importlib.metadata import PackageNotFoundError, requires

    closure: Set[str] = set()
    seen: Set[Tuple[str, FrozenSet[str]]] = set()
    pending = [_name_and_extras(r) for r in requirements]
    while pending:
        name, extras = pending.pop()
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        closure.add(name)
        try:
            needed = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in needed:
            requirement, _, marker = line.partition(";")
            wanted = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if wanted is None or wanted.group(1).lower() in extras:
                pending.append(_name_and_extras(requirement))
    return closure


def stage_file(stage: Dict[str, Any]) -> Path:
    """The executable module of a bodywork.yaml stage."""
    return REPO_ROOT / str(stage["executable_module_path"])
