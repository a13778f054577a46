"""Every environment's exact versions: one command writes the locks, another proves them.

    python scripts/locks.py compile     # after changing a pin: rewrite every lock and bodywork.yaml
    python scripts/locks.py check       # CI: the locks are complete, installable and agree
    python scripts/locks.py outdated    # report newer releases (never fails; a scheduled CI job)

The locks (``constraints/``), each resolved with uv, dependencies included:

- ``<stage>_py39.txt``: what a Bodywork stage installs in ``bodyworkml/bodywork-core:3.0``
  (CPython 3.9, glibc 2.31, x86_64, wheels only) from the pins of ``requirements_pipe.txt``
  marked for it (``# stages: train_model serve_model``). ``bodywork.yaml`` lists exactly these
  lines as the stage's ``requirements``, so the cluster installs what the tests ran with.
- ``pipeline_py39.txt``: the same for all of ``requirements_pipe.txt`` (the stage locks are
  resolved under it, so the stages agree on every shared package).
- ``checks_py311.txt``: the test and static-analysis environments (``requirements_pipe.txt``,
  ``requirements_test.txt``, ``requirements_lint.txt``) on CPython 3.11 (glibc Linux), with the
  pipeline at its 3.9 versions.
- ``deploy_py39.txt``: ``tox -e deployment_config`` (``requirements_deploy.txt``: Bodywork's CLI,
  which runs both stages there on Python 3.9).

``check`` never resolves a loose requirement: it resolves each lock *as written* and demands that
this adds and changes nothing, so a newer upstream release cannot make it fail. Exit 0 when all
holds, 1 with one ``ERROR`` line per problem.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints"
BODYWORK_YAML = ROOT / "bodywork.yaml"
PIPE = ROOT / "requirements_pipe.txt"
STAGES = ("train_model", "serve_model")
IMAGE_PYTHON = "3.9"
# bodyworkml/bodywork-core:3.0 is python:3.9-slim on Debian 11: glibc 2.31, x86_64.
IMAGE_PLATFORM = "x86_64-manylinux_2_31"
BUILD_CONSTRAINTS = CONSTRAINTS / "bodywork.txt"


class Lock(NamedTuple):
    """One lock: its inputs, where it is written and the interpreter it is resolved for."""

    name: str
    inputs: Tuple[Path, ...]
    python: str
    platform: Optional[str]
    constraint: Optional[Path] = None
    wheels_only: bool = True
    directory: Path = CONSTRAINTS

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.directory / f"{self.name}.txt"

    def target(self) -> List[str]:
        """uv options selecting the interpreter and platform this lock is for."""
        options = ["--python-version", self.python]
        options += ["--python-platform", self.platform] if self.platform else ["--universal"]
        if self.wheels_only:
            options += ["--only-binary", ":all:"]
        return options


PIPELINE = Lock("pipeline_py39", (PIPE,), IMAGE_PYTHON, IMAGE_PLATFORM)
STAGE_LOCKS = tuple(
    Lock(f"{stage}_py39", (), IMAGE_PYTHON, IMAGE_PLATFORM, PIPELINE.path) for stage in STAGES
)
CHECKS = Lock(
    "checks_py311",
    (PIPE, ROOT / "requirements_test.txt", ROOT / "requirements_lint.txt"),
    "3.11", IMAGE_PLATFORM, PIPELINE.path,
)
# Bodywork 3.0.12 is an sdist only: built with constraints/bodywork.txt.
DEPLOY = Lock("deploy_py39", (ROOT / "requirements_deploy.txt",), IMAGE_PYTHON, IMAGE_PLATFORM,
              wheels_only=False)


class Pin(NamedTuple):
    """A requirement line: canonical name (extras dropped), version, the stages it is for."""

    name: str
    version: str
    line: str
    stages: Tuple[str, ...]


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


def canonical(name: str) -> str:
    """A project name in PEP 503 normal form."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_line(raw: str) -> Optional[Pin]:
    """The pin on one requirements line (None for blanks, comments and options)."""
    text, _, comment = raw.partition("#")
    line = re.sub(r"\s+", "", text.split(";", 1)[0])
    if not line or line.startswith("-"):
        return None
    match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?(.*)", line)
    if not match:
        raise ValueError(f"not a requirement: {raw!r}")
    spec = match.group(3)
    version = spec[2:] if spec.startswith("==") and "," not in spec else ""
    marker = re.match(r"\s*stages:(.*)", comment)
    stages = tuple(marker.group(1).replace(",", " ").split()) if marker else ()
    return Pin(canonical(match.group(1)), version, line, stages)


def read_pins(text: str) -> Dict[str, Pin]:
    """Every pin of a requirements text, by canonical name."""
    pins = (parse_line(raw) for raw in text.splitlines())
    return {pin.name: pin for pin in pins if pin is not None}


def locked_lines(pins: Dict[str, Pin]) -> List[str]:
    """A lock's content as sorted ``name==version`` lines."""
    return [f"{pin.name}=={pin.version}" for pin in sorted(pins.values())]


def uv_compile(
    lock: Lock, requirements: str, index: Sequence[str], constrained: bool = True
) -> Tuple[int, str, str]:
    """Resolve requirements text with uv for a lock's target: (exit status, lock text, errors)."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "requirements.in"
        source.write_text(requirements)
        # --python: skip uv's interpreter discovery (slow behind pyenv shims); the target is
        # --python-version/--python-platform all the same.
        command = [sys.executable, "-m", "uv", "pip", "compile", str(source), "--quiet",
                   "--python", sys.executable,
                   "--no-header", "--no-annotate", *lock.target(), *index]
        if constrained and lock.constraint is not None:
            command += ["--constraint", str(lock.constraint)]
        if not lock.wheels_only:
            command += ["--build-constraints", str(BUILD_CONSTRAINTS)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    return done.returncode, done.stdout, " ".join(done.stderr.split())[-800:]


def stage_inputs(pins: Dict[str, Pin]) -> Dict[str, List[str]]:
    """Each stage's top-level pins, from the ``# stages:`` markers of requirements_pipe.txt."""
    return {stage: [p.line for p in pins.values() if stage in p.stages] for stage in STAGES}


def inputs_of(lock: Lock) -> str:
    """The requirements text a lock is compiled from."""
    if lock in STAGE_LOCKS:
        stage = lock.name[: -len("_py39")]
        return "\n".join(stage_inputs(read_pins(PIPE.read_text()))[stage]) + "\n"
    return "".join(path.read_text() for path in lock.inputs)


def header(lock: Lock) -> str:
    """The comment at the top of a lock file."""
    what = ", ".join(p.name for p in lock.inputs) or f"the pins of {PIPE.name} marked for it"
    platform = lock.platform or "any platform"
    return (f"# Lock of {what} for CPython {lock.python} ({platform}).\n"
            f"# Written by `python scripts/locks.py compile`; proved by `... check`. "
            f"Do not edit by hand.\n")


def replace_stage_requirements(text: str, stage: str, lines: Sequence[str]) -> str:
    """bodywork.yaml's text with one stage's ``requirements:`` list replaced, comments kept."""
    pattern = re.compile(
        rf"(\n  {stage}:\n(?:    .*\n|\s*\n)*?    requirements:\n)((?:      - .*\n)+)"
    )
    if not pattern.search(text):
        raise ValueError(f"bodywork.yaml has no requirements list for stage {stage}")
    body = "".join(f"      - {line}\n" for line in lines)
    return pattern.sub(lambda m: m.group(1) + body, text, count=1)


def compile_all(index: Sequence[str]) -> List[str]:
    """Write every lock and bodywork.yaml's stage lists; the problems met (none on success)."""
    for lock in (PIPELINE, *STAGE_LOCKS, CHECKS, DEPLOY):
        print(f"locking {shown(lock.path)}", flush=True)
        status, text, errors = uv_compile(lock, inputs_of(lock), index)
        if status != 0:
            return [f"{lock.name}: does not resolve: {errors}"]
        lock.path.write_text(header(lock) + "\n".join(locked_lines(read_pins(text))) + "\n")
    config = BODYWORK_YAML.read_text()
    for stage, lock in zip(STAGES, STAGE_LOCKS):
        config = replace_stage_requirements(config, stage, locked_lines(read_pins(
            lock.path.read_text())))
    BODYWORK_YAML.write_text(config)
    return []


def differences(what: str, expected: Dict[str, Pin], actual: Dict[str, Pin]) -> List[str]:
    """One message per package whose version differs or that one side lacks."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if want is None and got is not None:
            problems.append(f"{what}: adds {name}=={got.version}")
        elif got is None and want is not None:
            problems.append(f"{what}: lacks {name}=={want.version}")
        elif want is not None and got is not None and want.version != got.version:
            problems.append(f"{what}: has {name}=={got.version}, expected =={want.version}")
    return problems


def pins_held(what: str, pins: Dict[str, Pin], lock: Dict[str, Pin]) -> List[str]:
    """One message per exact pin that a lock does not hold at that version."""
    problems = []
    for pin in pins.values():
        if not pin.version:
            continue
        held = lock.get(pin.name)
        if held is None or held.version != pin.version:
            holds = f"=={held.version}" if held else "nothing"
            problems.append(f"{what}: pins {pin.name}=={pin.version} but the lock holds {holds}")
    return problems


def resolves_to_itself(lock: Lock, index: Sequence[str]) -> List[str]:
    """Resolving the lock as written must add nothing and change nothing."""
    written = read_pins(lock.path.read_text())
    print(f"resolving {shown(lock.path)} as written for CPython {lock.python} "
          f"({lock.platform or 'any platform'})", flush=True)
    status, text, errors = uv_compile(lock, "\n".join(locked_lines(written)) + "\n", index,
                                      constrained=False)
    if status != 0:
        return [f"{lock.name}: does not install as written for CPython {lock.python}: {errors}"]
    return differences(f"{lock.name} resolved as written", written, read_pins(text))


def agreement_problems() -> List[str]:
    """The locks agree with the requirements files, with each other and with bodywork.yaml."""
    pipe = read_pins(PIPE.read_text())
    problems = [f"{PIPE.name}: {p.name} is not pinned exactly" for p in pipe.values()
                if not p.version]
    problems += [f"{PIPE.name}: {p.name} names no stage (# stages: ...)" for p in pipe.values()
                 if not p.stages]
    problems += [f"{PIPE.name}: {p.name} names unknown stages {sorted(set(p.stages) - set(STAGES))}"
                 for p in pipe.values() if set(p.stages) - set(STAGES)]
    pipeline = read_pins(PIPELINE.path.read_text())
    problems += pins_held(PIPELINE.name, pipe, pipeline)
    stages = read_pins_yaml()
    for stage, lock in zip(STAGES, STAGE_LOCKS):
        locked = read_pins(lock.path.read_text())
        problems += pins_held(lock.name, {k: p for k, p in pipe.items() if stage in p.stages},
                              locked)
        problems += [f"{lock.name}: {name}=={pin.version} but {PIPELINE.name} holds "
                     f"=={pipeline[name].version if name in pipeline else 'nothing'}"
                     for name, pin in locked.items()
                     if name not in pipeline or pipeline[name].version != pin.version]
        problems += differences(f"bodywork.yaml {stage} requirements", locked, stages[stage])
    for lock in (CHECKS, DEPLOY):
        locked = read_pins(lock.path.read_text())
        for path in lock.inputs:
            problems += pins_held(f"{lock.name} ({path.name})", read_pins(path.read_text()), locked)
    checks = read_pins(CHECKS.path.read_text())
    problems += [f"{CHECKS.name}: {name}=={checks[name].version} but the stages run "
                 f"=={pin.version}" for name, pin in pipeline.items()
                 if name in checks and checks[name].version != pin.version]
    return problems


def read_pins_yaml() -> Dict[str, Dict[str, Pin]]:
    """Each stage's requirements in bodywork.yaml, as pins."""
    import yaml

    config = yaml.safe_load(BODYWORK_YAML.read_text())
    return {stage: read_pins("\n".join(str(r) for r in config["stages"][stage]["requirements"]))
            for stage in STAGES}


def check_all(index: Sequence[str]) -> List[str]:
    """Every problem with the locks (none when they are complete, installable and agree)."""
    problems = agreement_problems()
    for lock in (*STAGE_LOCKS, PIPELINE, CHECKS, DEPLOY):
        problems += resolves_to_itself(lock, index)
    return problems


def outdated(index: Sequence[str], which: Sequence[Lock] = (PIPELINE, CHECKS, DEPLOY)) -> List[str]:
    """Packages whose locked version differs from what a fresh resolution picks today."""
    report = []
    for lock in which:
        loose = "\n".join(re.sub(r"==.*", "", raw.split("#")[0].split(";")[0]).strip()
                          for raw in inputs_of(lock).splitlines()
                          if raw.strip() and not raw.lstrip().startswith(("#", "-")))
        status, text, errors = uv_compile(lock._replace(constraint=None), loose + "\n", index)
        if status != 0:
            report.append(f"{lock.name}: a fresh resolution fails: {errors}")
            continue
        fresh, written = read_pins(text), read_pins(lock.path.read_text())
        report += [f"{lock.name}: {name} {written[name].version} -> {pin.version}"
                   for name, pin in sorted(fresh.items())
                   if name in written and written[name].version != pin.version]
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """compile, check or outdated (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("compile", "check", "outdated"))
    parser.add_argument("--index-url", help="package index to resolve against (uv's default: PyPI)")
    parser.add_argument("--find-links", help="a folder of wheels to resolve against")
    parser.add_argument("--no-index", action="store_true", help="only --find-links")
    args = parser.parse_args(argv)
    index: List[str] = []
    if args.index_url:
        index += ["--index-url", args.index_url]
    if args.find_links:
        index += ["--find-links", args.find_links]
    if args.no_index:
        index.append("--no-index")
    if args.action == "outdated":
        report = outdated(index)
        print("\n".join(report) if report else "every lock is at the newest releases")
        return 0
    problems = compile_all(index) if args.action == "compile" else check_all(index)
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    if not problems:
        print("locks written" if args.action == "compile" else
              "locks are complete, install as written and agree with the requirements files "
              "and bodywork.yaml")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
