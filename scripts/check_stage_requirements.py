"""Check bodywork.yaml's stage requirements: pinned as in requirements_pipe.txt, installable on 3.9.

Usage: python scripts/check_stage_requirements.py [--python-version 3.9] [--lock LOCK]
           [--no-resolve] BODYWORK_YAML REQUIREMENTS_TXT

For every stage, each requirement must be exactly a pin of the pipeline's requirements file (what
the tests run with), and the stage's whole set must resolve (with uv), dependencies included, to
binary wheels for CPython at the given version on glibc Linux x86_64 (bodyworkml/bodywork-core:3.0
runs Python 3.9 on Debian 11, glibc 2.31). With --lock, every version resolved must be the lock's
(constraints/pipeline_py39.txt, which the tests install under). Exit 0 when all hold, 1 with one
line per problem otherwise.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import yaml

# bodyworkml/bodywork-core:3.0 is python:3.9-slim on Debian 11: glibc 2.31, x86_64.
TARGET_PLATFORM = "x86_64-manylinux_2_31"


class Requirement(NamedTuple):
    """A requirement: its canonical project name and its line, canonical name and no spaces."""

    name: str
    line: str


def parse_requirement(line: str) -> Requirement:
    """Canonical name (PEP 503, extras dropped) and the compact line of one requirement."""
    compact = re.sub(r"\s+", "", line)
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", compact)
    if not match:
        raise ValueError(f"not a requirement: {line!r}")
    name = re.sub(r"[-_.]+", "-", match.group(0)).lower()
    return Requirement(name, name + compact[match.end():].lower())


def read_pins(text: str) -> Dict[str, Requirement]:
    """The pins of a requirements file, by canonical name (comments and options skipped)."""
    pins: Dict[str, Requirement] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = parse_requirement(line)
            pins[requirement.name] = requirement
    return pins


def stage_requirements(config: Dict[str, Any]) -> Dict[str, List[str]]:
    """Each stage's `requirements` list from a parsed bodywork.yaml."""
    return {
        str(name): [str(r) for r in stage.get("requirements", [])]
        for name, stage in config["stages"].items()
    }


def pin_problems(stages: Dict[str, List[str]], pins: Dict[str, Requirement]) -> List[str]:
    """One message per stage requirement that is not exactly a pin of the requirements file."""
    problems = []
    for stage, requirements in stages.items():
        for line in requirements:
            requirement = parse_requirement(line)
            pinned = pins.get(requirement.name)
            if pinned is None:
                problems.append(f"{stage}: {line!r} is not in the pipeline's requirements file")
            elif "==" not in requirement.line:
                problems.append(f"{stage}: {line!r} is not pinned to an exact version")
            elif pinned.line != requirement.line:
                problems.append(f"{stage}: {line!r} differs from the pin {pinned.line!r}")
    return problems


def resolve_command(python_version: str) -> List[str]:
    """A uv call resolving requirements from stdin, dependencies and markers, for another Python.

    uv evaluates environment markers for the target version (pip's --python-version does not:
    it would pick, e.g., urllib3 2 for botocore on 3.9, where 3.9's pip picks urllib3 1.26).
    """
    return [
        sys.executable, "-m", "uv", "pip", "compile", "-", "--quiet", "--no-header",
        "--no-annotate", "--only-binary", ":all:", "--python-version", python_version,
        "--python-platform", TARGET_PLATFORM,
    ]


def resolved_versions(compiled: str) -> Dict[str, str]:
    """Canonical name -> version from a compiled requirements listing."""
    versions = {}
    for requirement in read_pins(compiled).values():
        name, _, version = requirement.line.partition("==")
        versions[requirement.name] = version
    return versions


def lock_problems(stage: str, resolved: Dict[str, str], lock: Dict[str, Requirement]) -> List[str]:
    """One message per resolved version that the lock does not hold exactly."""
    problems = []
    for name, version in sorted(resolved.items()):
        locked = lock.get(name)
        if locked is None or locked.line != f"{name}=={version}".lower():
            held = locked.line if locked else "nothing"
            problems.append(f"{stage}: resolves {name}=={version} but the lock holds {held}")
    return problems


def resolve_problems(
    stages: Dict[str, List[str]], python_version: str, lock: Optional[Dict[str, Requirement]]
) -> List[str]:
    """One message per stage whose requirements do not resolve (as locked) for the Python."""
    problems = []
    for stage, requirements in stages.items():
        if not requirements:
            continue
        print(f"resolving {stage}'s requirements for CPython {python_version} "
              f"({TARGET_PLATFORM}): {' '.join(requirements)}", flush=True)
        done = subprocess.run(
            resolve_command(python_version), input="\n".join(requirements) + "\n",
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            detail = " ".join(done.stderr.split())[-600:]
            problems.append(
                f"{stage}: requirements do not resolve for Python {python_version}: {detail}"
            )
        elif lock is not None:
            problems += lock_problems(stage, resolved_versions(done.stdout), lock)
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Check the pins, then (unless --no-resolve) resolve each stage for the target Python."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bodywork_yaml", type=Path)
    parser.add_argument("requirements", type=Path)
    parser.add_argument("--python-version", default="3.9")
    parser.add_argument("--lock", type=Path, help="constraints file every resolution must match")
    parser.add_argument("--no-resolve", action="store_true", help="only compare the pins")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.bodywork_yaml.read_text())
    stages = stage_requirements(config)
    problems = pin_problems(stages, read_pins(args.requirements.read_text()))
    if not problems and not args.no_resolve:
        lock = read_pins(args.lock.read_text()) if args.lock else None
        problems = resolve_problems(stages, args.python_version, lock)
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    if not problems:
        locked = f" as {args.lock} says" if args.lock else ""
        print(f"stage requirements match {args.requirements} and resolve for Python "
              f"{args.python_version}{locked}"
              + (" (resolution skipped)" if args.no_resolve else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
