"""The docs' example outputs are what a real run prints, and their recipes run as written.

scripts/make_doc_examples.py writes the examples (README.md, docs/api.md, docs/operations.md)
and the report screenshot (docs/run_report.png) from a real run; these tests run it again,
without the browser, and compare. When one fails because the model, an answer or the `models`
command changed on purpose, run ``python scripts/make_doc_examples.py`` and commit the result.
"""
from __future__ import annotations

import difflib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from testing_support.stages import PYTHON, REPO_ROOT, free_port, stage_env

RERUN = "the docs are stale: run `python scripts/make_doc_examples.py` and commit what it changed"


def _script() -> ModuleType:
    path = REPO_ROOT / "scripts" / "make_doc_examples.py"
    spec = importlib.util.spec_from_file_location("make_doc_examples", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


script = _script()


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One real run, as the script makes it (no screenshot)."""
    return script.run_examples(tmp_path_factory.mktemp("doc-examples"))


@pytest.mark.parametrize("name", sorted(script.PAGES))
def test_the_docs_hold_what_the_run_prints(examples: Any, name: str) -> None:
    page = (REPO_ROOT / script.PAGES[name]).read_text(encoding="utf-8")
    shown = script.marked(page)
    assert name in shown, f"{script.PAGES[name]} has no <!-- generated: {name} --> block"
    printed = examples.texts[name]
    diff = "\n".join(difflib.unified_diff(
        script.normalised(shown[name]).splitlines(), script.normalised(printed).splitlines(),
        "docs", "run", lineterm=""))
    assert script.agree(shown[name], printed), f"{RERUN}\n{diff}"


def test_the_report_screenshot_shows_the_report_as_it_is_today(examples: Any) -> None:
    recorded = script.recorded_structure()
    assert recorded is not None, f"docs/run_report.png records no structure: {RERUN}"
    today = script.report_structure(examples.report_html)
    assert {"Tranches that fed the model", "The tranche and the curves per product code"} <= set(
        today["headings"])
    assert recorded == today, RERUN


def test_the_example_of_the_answer_is_the_curl_of_a_fresh_clone(examples: Any) -> None:
    answer = script.marked((REPO_ROOT / "docs" / "api.md").read_text(encoding="utf-8"))["answer"]
    curl = script.marked((REPO_ROOT / "README.md").read_text(encoding="utf-8"))["curl"]
    answered = "".join(line for line in curl.splitlines() if line.startswith("#"))
    numbers = [n for n in script.NUMBER.findall(script.normalised(answered)) if "." in n]
    assert len(numbers) == 2 and all(n in answer for n in numbers)


@pytest.mark.parametrize("shown, printed, same", [
    ("MAE 0.4022 h on 200 rows", "MAE 0.4023 h on 200 rows", True),
    ("MAE 0.4022 h on 200 rows", "MAE 0.4031 h on 200 rows", False),
    ("MAE 0.4022 h on 200 rows", "MAE 0.4022 h on 201 rows", False),
    ('{"est":3.2126449308284553}', '{"est":3.2126449308284550}', True),
    ('{"est":3.285261628598552}', '{"est":3.2126449308284553}', False),
    ("model 20261130-185347-98c8d232-9f3c at 2026-11-30 18:53:47",
     "model 20261203-161536-d275b7ca-7bdd at 2026-12-03 16:15:36", True),
    ("time_to_dispatch_2026-11-27T23:00:00", "time_to_dispatch_2026-12-04T23:00:00", False),
    ("live (published)", "live (rolled back)", False),
])
def test_an_example_agrees_only_beyond_what_changes_every_run(
    shown: str, printed: str, same: bool
) -> None:
    assert script.agree(shown, printed) is same


def test_a_rerun_rewrites_only_the_examples_that_changed() -> None:
    page = ("intro\n<!-- generated: a -->\nmodel 20261130-185347-98c8d232-9f3c MAE 0.4022\n"
            "<!-- /generated: a -->\nmiddle\n<!-- generated: b -->\nold\n<!-- /generated: b -->\n")
    again = script.with_examples(page, {"a": "model 20261203-161536-d275b7ca-7bdd MAE 0.4022",
                                        "b": "new"})
    assert again == page.replace("\nold\n", "\nnew\n")


def local_s3_recipe() -> str:
    """The bash block of docs/development.md's "A local S3 store"."""
    text = (REPO_ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    section = text.split("\n## A local S3 store\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_local_s3_recipe_runs_as_written() -> None:
    recipe = local_s3_recipe()
    tools = "T=.tox/unit_and_functional_tests/bin"
    assert recipe.count(tools) == 1 and recipe.count("5000") == 3
    port = free_port()
    run = recipe.replace(tools, f"T={Path(PYTHON).parent}").replace("5000", str(port))
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + run],
        cwd=REPO_ROOT, env=stage_env({}), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "live (published)" in done.stdout and "s3://ttd-local/pipeline" in done.stderr
