"""deploy/prometheus/alerts.yml: valid rules, proven by promtool's unit tests, on real metrics.

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it); without it the
promtool tests skip, saying so.
"""
from __future__ import annotations

import http.client
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest
import yaml

from pipeline.api.routes import BATCH_PATH
from pipeline.store import open_store
from testing_support.servers import ServeProcess, request
from testing_support.stages import REPO_ROOT, stage_env
from tests.api_support import SINGLE, publish_fitted
from tests.docs_support import DOCS_DIR, anchors

RULES_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's prometheus package (.ci/run does, as root)",
)
# What training records for the alerts on the model (the service exports each as a gauge).
RECORDED = {
    "metrics": {"held_out": {"overall": {"mae": 0.42, "coverage_p90": 0.875}}},
    "options": {"thresholds": {"coverage_min": 0.85}},
    "previous_model": {"model_version": "20261120-000000-old", "heldout_mae": 0.38,
                       "realised_mae": 0.61},
}


def promtool(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run promtool from the rules' directory (where the unit tests name their rule file)."""
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=RULES_DIR, input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)


def rules(kind: str) -> List[Dict[str, Any]]:
    """Every rule of alerts.yml that is an ``alert`` or a ``record``."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if kind in rule]


@needs_promtool
def test_the_rules_are_valid() -> None:
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules('alert')) + len(rules('record'))} rules found" in done.stdout


@needs_promtool
def test_the_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_unit_tests_fail_on_a_wrong_threshold(tmp_path: Path) -> None:
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 8 * 86400", "> 7 * 86400"))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "TimeToDispatchModelStale" in done.stdout + done.stderr


def test_every_alert_is_shown_firing_and_documented() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: Set[str] = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    quiet: Set[str] = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
        if not case["exp_alerts"]
    }
    runbooks = anchors((DOCS_DIR / "operations.md").read_text(encoding="utf-8"))
    names = [rule["alert"] for rule in rules("alert")]
    assert len(names) == len(set(names)) == 11
    assert "TimeToDispatchUnknownProducts" in names
    for rule in rules("alert"):
        name = rule["alert"]
        assert name in fired and name in quiet, f"{name}: no unit test shows it firing and quiet"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        page, _, anchor = notes["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in runbooks, f"{name}: {notes['runbook']}"


def test_the_runbook_table_lists_every_alert() -> None:
    page = (DOCS_DIR / "operations.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `(TimeToDispatch\w+)` \|", page, re.M)
    assert sorted(listed) == sorted(rule["alert"] for rule in rules("alert"))


@needs_promtool
def test_a_live_services_metrics_pass_the_lint_and_carry_every_series_the_rules_read(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    root.mkdir()
    publish_fitted(open_store(str(root)), extra=RECORDED)
    with ServeProcess(str(root), stage_env({}), tmp_path, form="module") as server:
        server.wait_listening()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            request(conn, "POST", SINGLE, {"product_code": "SKU001", "orders_placed": 3})
            request(conn, "POST", BATCH_PATH, [{"product_code": "SKU002", "orders_placed": 5}])
            conn.request("GET", "/metrics")
            exposition = conn.getresponse().read().decode()
        finally:
            conn.close()
    lint = promtool("check", "metrics", stdin=exposition)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    exported = set(re.findall(r"^(ttd_\w+?)(?:\{| )", exposition, re.M))
    read = set(re.findall(r"(?<![:\w])ttd_\w+", RULES.read_text()))
    assert read <= exported, f"the rules read series the service does not export: {read - exported}"


@needs_promtool
def test_the_metrics_lint_can_fail() -> None:
    bad = "# HELP ttd_requests Requests\n# TYPE ttd_requests counter\nttd_requests 1\n"
    lint = promtool("check", "metrics", stdin=bad)
    assert lint.returncode != 0
    assert "_total" in lint.stdout + lint.stderr
