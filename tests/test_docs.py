"""README.md and docs/: the front door stays short, every link resolves, every flag exists.

A flag is checked against the command it belongs to: the project command named before it in the
same code span or code block line, or else in an earlier one of the same section (a heading
starts a new section). Flags of other tools (pip, bodywork, pytest, ...) are not checked; a flag
that follows no command must exist in some command of this project.
"""
from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

from testing_support.stages import PYTHON, REPO_ROOT
from tests.docs_support import DOCS_DIR, FENCE, HEADING, anchors, broken_links, slug

README = REPO_ROOT / "README.md"
PAGES = [README, REPO_ROOT / "DEVELOPERS.md", *sorted(DOCS_DIR.glob("*.md"))]
README_MAX_LINES = 200
BENCHMARKS = REPO_ROOT / "benchmarks"
# Each project command and the arguments (after ``python``) that print its options.
HELP: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "train_model": (("-m", "pipeline.train_model", "--help"),),
    "serve_model": (("-m", "pipeline.serve_model", "--help"),),
    "simulate": (("-m", "pipeline.simulate", "--help"),),
    "models": (("-m", "pipeline.models", "--help"),) + tuple(
        ("-m", "pipeline.models", "STORE", sub, "--help") for sub in ("list", "show", "rollback")),
    "locks": (("scripts/locks.py", "--help"),),
    "run_notebook": (("scripts/run_notebook.py", "--help"),),
    "make_doc_examples": (("scripts/make_doc_examples.py", "--help"),),
}
NAMES = {
    "pipeline.train_model": "train_model", "train_model.py": "train_model",
    "train_model": "train_model", "pipeline.serve_model": "serve_model",
    "serve_model.py": "serve_model", "serve_model": "serve_model",
    "pipeline.simulate": "simulate", "pipeline.models": "models",
    "locks.py": "locks", "run_notebook.py": "run_notebook",
    "make_doc_examples.py": "make_doc_examples",
}
OTHER_TOOLS = {
    "apt-get", "aws", "bash", "bodywork", "check-jsonschema", "curl", "docker", "flake8", "git",
    "kubectl", "mypy", "pip", "promtool", "pytest", "run_checks.sh", "run_local.sh",
    "create_cronjob.sh", "tox", "uv", "venv", "vermin", "wrk",
}
OTHER = "another tool"
FLAG = re.compile(r"^--[a-z][a-z0-9-]*")
CODE_SPAN = re.compile(r"`([^`]+)`")
Mention = Tuple[int, Optional[str], str]  # line, command (None: none named), flag


def command_named(token: str) -> Optional[str]:
    """The project command (or OTHER) a token names, else None."""
    word = token.strip("[](),;:'\"")
    base = word.rsplit("/", 1)[-1]
    if base in NAMES:
        return NAMES[base]
    if base.endswith(".py") and (BENCHMARKS / base).is_file():
        return f"benchmarks/{base}"
    if base in OTHER_TOOLS:
        return OTHER
    return None


def units(text: str) -> Iterator[Tuple[int, str, bool]]:
    """Code spans, code block lines and headings in order: (line, text, starts a section)."""
    fenced = False
    paragraph: List[Tuple[int, str]] = []
    for number, line in enumerate(text.splitlines() + [""], 1):
        fence = FENCE.match(line)
        heading = None if fenced else HEADING.match(line)
        if fenced or fence or heading or not line.strip():
            yield from spans(paragraph)
            paragraph = []
        if fence:
            fenced = not fenced
        elif fenced:
            yield number, line, False
        elif heading:
            yield number, heading.group(2), True
        elif line.strip():
            paragraph.append((number, line))


def spans(paragraph: List[Tuple[int, str]]) -> Iterator[Tuple[int, str, bool]]:
    """The code spans of a paragraph (a span may run over a line break) with their lines."""
    if not paragraph:
        return
    text = "\n".join(line for _, line in paragraph)
    for span in CODE_SPAN.finditer(text):
        yield paragraph[0][0] + text.count("\n", 0, span.start()), span.group(1), False


def flag_mentions(text: str) -> List[Mention]:
    """Every long flag in the code of a Markdown page, with the command it belongs to."""
    found: List[Mention] = []
    context: Optional[str] = None
    for number, unit, section in units(text):
        if section:
            context = None
        current = context
        for token in unit.split():
            named = command_named(token)
            if named is not None:
                current = context = named
                continue
            flag = FLAG.match(token.lstrip("[("))
            if flag:
                found.append((number, current, flag.group(0)))
    return found


@functools.lru_cache(maxsize=None)
def options_of(command: str) -> Set[str]:
    """The long options a project command's --help lists."""
    invocations = HELP.get(command) or (((command, "--help"),) if command.startswith(
        "benchmarks/") else ())
    options: Set[str] = set()
    for args in invocations:
        done = subprocess.run([PYTHON, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, f"{' '.join(args)}: exit {done.returncode}\n{done.stderr}"
        options |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout))
    return options


def every_option() -> Set[str]:
    """The long options of every project command."""
    commands = list(HELP) + [f"benchmarks/{p.name}" for p in sorted(BENCHMARKS.glob("*.py"))
                             if "argparse" in p.read_text()]
    return set().union(*(options_of(command) for command in commands))


def unknown_flags(text: str, where: str) -> List[str]:
    """The flags a page gives a project command that its --help does not list."""
    problems = []
    for number, command, flag in flag_mentions(text):
        if command == OTHER:
            continue
        known = every_option() if command is None else options_of(command)
        if flag not in known:
            problems.append(f"{where}:{number}: {flag} is not an option of "
                            f"{command or 'any command of this project'}")
    return problems


def test_the_readme_is_a_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    for heading in ("two-commands", "the-answer", "architecture", "where-to-go-next"):
        assert heading in anchors(text)
    linked = {target.split("#")[0] for target in re.findall(r"\]\((docs/[^)]+)\)", text)}
    assert {f"docs/{page.name}" for page in DOCS_DIR.glob("*.md")} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_flag_is_an_option_of_its_command(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert unknown_flags(text, page.name) == []


def test_the_docs_give_flags_to_the_project_commands() -> None:
    mentions = [m for page in PAGES for m in flag_mentions(page.read_text(encoding="utf-8"))]
    commands = {command for _, command, _ in mentions}
    assert {"train_model", "serve_model", "models", "simulate", "locks",
            "benchmarks/bench_train.py"} <= commands
    assert len(mentions) > 50


BROKEN = """# A page

## First steps

Run `python -m pipeline.train_model STORE --max-hourz 5` then
`python -m pipeline.serve_model STORE --drain-seconds 1 --max-batch-rows 10`.

```bash
python -m pipeline.models STORE rollback VERSION --reason "why" --because "no"
pip install --no-deps something
```

The `serve_model` service takes `--root-path`, but not `--max-hours`.

## Elsewhere

`--no-such-flag` follows no command; see [the gates](#first-steps) and [nowhere](#nowhere),
[a page](missing.md) and [this one](broken.md#elsewhere).
"""


def test_the_checks_fail_on_a_broken_page(tmp_path: Path) -> None:
    assert unknown_flags(BROKEN, "broken.md") == [
        "broken.md:5: --max-hourz is not an option of train_model",
        "broken.md:9: --because is not an option of models",
        "broken.md:13: --max-hours is not an option of serve_model",
        "broken.md:17: --no-such-flag is not an option of any command of this project",
    ]
    page = tmp_path / "broken.md"
    page.write_text(BROKEN)
    assert broken_links(page) == ["broken.md:17: #nowhere: no such anchor",
                                  "broken.md:18: missing.md: no such file"]


@pytest.mark.parametrize("heading, anchor", [
    ("train_model: the weekly batch stage", "train_model-the-weekly-batch-stage"),
    ("The API: serve_model, the prediction service", "the-api-serve_model-the-prediction-service"),
    ("How the bound is learned", "how-the-bound-is-learned"),
    ("`p90` bound (format 2)", "p90-bound-format-2"),
    ("Rolling updates and SIGTERM", "rolling-updates-and-sigterm"),
])
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
    assert anchors(f"# {heading}\n\n## {heading}\n") == {anchor, f"{anchor}-1"}
