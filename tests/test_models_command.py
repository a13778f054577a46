"""The operator's side of the weekly cycle: list, show and rollback; realised accuracy; re-runs.

On the local store and on moto's S3 server. A "week" writes one simulated tranche and runs
train_model on it in-process (champion tolerance wide open, so every week publishes).
"""
from __future__ import annotations

import json
import logging
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List

import pytest

from pipeline import artefacts, history, models
from pipeline import train_model
from pipeline.simulate import simulate_tranche, tranche_key
from pipeline.store import Store, open_store
from pipeline.training import run as stage_run
from testing_support.stages import PYTHON, REPO_ROOT, stage_env

FIRST_WEEK = datetime(2026, 10, 2, 23, tzinfo=timezone.utc)
ALWAYS_PUBLISH = ["--champion-tolerance", "100", "--no-report"]


def week(url: str, index: int, *options: str, rows: int = 400) -> int:
    """Deliver week ``index``'s tranche and run train_model on it."""
    when = (FIRST_WEEK + timedelta(weeks=index)).isoformat()
    data = simulate_tranche(rows, seed=50 + index, week=index).to_csv()
    open_store(url).write_bytes(tranche_key(when), data)
    return train_model.main([url, *ALWAYS_PUBLISH, *options])


def listed(url: str, capsys: pytest.CaptureFixture[str]) -> List[Dict[str, Any]]:
    capsys.readouterr()
    assert models.main([url, "list", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert isinstance(found, list)
    return found


def live_version(url: str) -> str:
    found = artefacts.read_pointer(open_store(url))
    assert found is not None
    return found[0].model_version


def error_lines(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def three_weeks(store_url: str) -> str:
    """A store where three weekly runs each published a model."""
    for index in range(3):
        assert week(store_url, index) == 0
    return store_url


def test_list_shows_every_model_newest_first_with_realised_accuracy(
    three_weeks: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = three_weeks
    store = open_store(url)
    entries = listed(url, capsys)
    assert len(entries) == 3
    assert [e["created_at"] for e in entries] == sorted((e["created_at"] for e in entries),
                                                        reverse=True)
    assert [e["live"] for e in entries] == [True, False, False]
    assert entries[0]["model_version"] == live_version(url)
    assert entries[0]["live_by"] == "published"
    newest, middle, oldest = entries
    assert newest["realised_mae"] is None, "no tranche arrived after the newest model's"
    for older, newer in ((oldest, middle), (middle, newest)):
        meta = json.loads(store.read_bytes(artefacts.metadata_key(newer["model_version"])))
        previous = meta["previous_model"]
        assert previous["model_version"] == older["model_version"]
        assert older["realised_mae"] == previous["realised_mae"] > 0
        assert previous["realised"]["tranche"]["key"] == newer["tranche_key"]
        assert previous["realised"]["rows_scored"] == 400
        assert older["heldout_mae"] == previous["heldout_mae"] > 0
        own = json.loads(store.read_bytes(artefacts.metadata_key(older["model_version"])))
        assert older["heldout_mae"] == own["metrics"]["held_out"]["overall"]["mae"]
        assert older["tranche_key"] == own["tranche"]["key"]
        assert older["rows"] == 400
    realised_keys = [k for k in store.list_keys("models/") if "/realised/" in k]
    assert len(realised_keys) == 2

    capsys.readouterr()
    assert models.main([url, "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["VERSION", "CREATED"]
    assert table[1].startswith("*") and newest["model_version"] in table[1]
    assert "live (published)" in table[1]
    assert oldest["model_version"] in table[3] and f"{oldest['realised_mae']:.4f}" in table[3]


def test_realised_accuracy_is_known_when_the_next_run_keeps_the_champion_or_is_rejected(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert week(store_url, 0) == 0
    first = live_version(store_url)
    # Week 1: the gates reject the new model (an impossible MAE limit).
    assert week(store_url, 1, "--mae-max", "0.0001", "--mae-warn", "0.0001") == \
        stage_run.EXIT_GATES
    # Week 2: the champion is deliberately kept: no tolerance, and a challenger fitted on
    # a tenth of the newest rows alone (no history window, so a share of them is held out).
    assert week(store_url, 2, "--champion-tolerance", "0", "--test-fraction", "0.9",
                "--min-rows-per-code", "5", "--history-weeks", "0") == 0
    assert live_version(store_url) == first
    entries = listed(store_url, capsys)
    assert [e["model_version"] for e in entries] == [first]
    realised = entries[0]["realised"]
    week1 = tranche_key((FIRST_WEEK + timedelta(weeks=1)).isoformat())
    week2 = tranche_key((FIRST_WEEK + timedelta(weeks=2)).isoformat())
    assert sorted(r["tranche_key"] for r in realised) == [week1, week2]
    on_week1 = next(r["mae"] for r in realised if r["tranche_key"] == week1)
    assert entries[0]["realised_mae"] == on_week1 > 0


def test_a_model_that_lost_the_pointer_race_is_listed_as_never_published(
    three_weeks: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(three_weeks)
    live = artefacts.load_latest(store)
    loser = "20991231-000000-0123abcd-beef"
    metadata = live.metadata.model_copy(update={"model_version": loser})
    with pytest.raises(artefacts.ConcurrentUpdate):
        artefacts.publish(store, live.model.to_json(), metadata, datetime.now(timezone.utc),
                          expected_token="a token the pointer no longer has")
    entries = {e["model_version"]: e for e in listed(three_weeks, capsys)}
    assert entries[loser]["published"] is False
    assert not entries[loser]["live"]
    assert all(e["published"] for v, e in entries.items() if v != loser)
    assert models.main([three_weeks, "list"]) == 0
    line = [row for row in capsys.readouterr().out.splitlines() if loser in row]
    assert "never published" in line[0]


def test_show_prints_the_metadata_and_where_the_report_is(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    when = FIRST_WEEK.isoformat()
    open_store(store_url).write_bytes(tranche_key(when), simulate_tranche(400, seed=3).to_csv())
    assert train_model.main([store_url]) == 0
    version = live_version(store_url)
    capsys.readouterr()
    assert models.main([store_url, "show", version]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"model {version}  (live, published)")
    assert "held-out MAE" in text and "gate champion: pass" in text
    report_line = next(line for line in text.splitlines() if line.strip().startswith("report"))
    assert "reports/time_to_dispatch_" in report_line and "missing" not in report_line
    assert models.main([store_url, "show", version, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metadata"]["model_version"] == version and shown["live"] is True
    assert models.main([store_url, "show", "20990101-000000-00000000"]) == models.EXIT_UNKNOWN
    assert models.main([store_url, "show", "../../etc"]) == models.EXIT_UNKNOWN


def test_rollback_moves_the_pointer_records_an_audit_and_the_next_run_builds_on_it(
    three_weeks: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = three_weeks
    store = open_store(url)
    entries = listed(url, capsys)
    newest, oldest = entries[0]["model_version"], entries[2]["model_version"]

    code = models.main([url, "rollback", oldest, "--reason", "bad week", "--by", "alice"])
    assert code == 0
    assert live_version(url) == oldest
    loaded = artefacts.load_latest(store)
    assert loaded.version == oldest, "what a service loads next"
    audits = store.list_keys(history.AUDIT_PREFIX)
    assert len(audits) == 1
    audit = json.loads(store.read_bytes(audits[0]))
    assert audit["from"]["model_version"] == newest
    assert audit["to"]["model_version"] == oldest
    assert (audit["by"], audit["reason"], audit["action"]) == ("alice", "bad week", "rollback")
    assert datetime.fromisoformat(audit["at"]).tzinfo is not None

    after = {e["model_version"]: e for e in listed(url, capsys)}
    assert after[oldest]["live"] and after[oldest]["live_by"] == "rolled back"
    assert after[oldest]["rollbacks_to"][0]["by"] == "alice"
    assert not after[newest]["live"]

    # Rolling back to the live model changes nothing and records nothing.
    assert models.main([url, "rollback", oldest]) == 0
    assert len(store.list_keys(history.AUDIT_PREFIX)) == 1

    # The next weekly run treats the rolled-back model as the champion and scores it.
    assert week(url, 3) == 0
    previous = artefacts.load_latest(store).metadata.previous_model
    assert previous is not None and previous.model_version == oldest
    assert previous.realised_mae is not None
    realised = [k for k in store.list_keys(f"models/{oldest}/realised/")]
    assert len(realised) == 2, "week 1 (its next tranche) and week 3 (after the rollback)"
    entry = {e["model_version"]: e for e in listed(url, capsys)}[oldest]
    assert entry["realised_mae"] == pytest.approx(entry["realised"][0]["mae"])


def test_rollback_refuses_unknown_and_corrupt_versions(
    three_weeks: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    url = three_weeks
    store = open_store(url)
    entries = listed(url, capsys)
    live = live_version(url)
    pointer_before = store.read_bytes(artefacts.POINTER_KEY)
    middle, oldest = entries[1]["model_version"], entries[2]["model_version"]

    for bad in ("20990101-000000-deadbeef", "../datasets", "latest.json", ""):
        caplog.clear()
        assert models.main([url, "rollback", bad]) == models.EXIT_UNKNOWN
        assert len(error_lines(caplog)) == 1, error_lines(caplog)

    # An artefact altered after publication (its metadata still names the old sha256).
    artefact = store.read_bytes(artefacts.model_key(oldest))
    store.write_bytes(artefacts.model_key(oldest), artefact.replace(b"SKU001", b"SKU00X", 1))
    caplog.clear()
    assert models.main([url, "rollback", oldest]) == models.EXIT_CORRUPT
    assert "checksum mismatch" in error_lines(caplog)[0]

    # Metadata altered after its successor recorded its checksum.
    meta = json.loads(store.read_bytes(artefacts.metadata_key(middle)))
    meta["metrics"]["held_out"]["overall"]["mae"] = 0.0001
    store.write_bytes(artefacts.metadata_key(middle), json.dumps(meta).encode())
    caplog.clear()
    assert models.main([url, "rollback", middle]) == models.EXIT_CORRUPT
    assert "checksum mismatch" in error_lines(caplog)[0]
    assert len(error_lines(caplog)) == 1

    assert store.read_bytes(artefacts.POINTER_KEY) == pointer_before
    assert live_version(url) == live
    assert store.list_keys(history.AUDIT_PREFIX) == []


class RivalMovesPointer:
    """A store on which another writer moves the pointer just before our conditional write."""

    def __init__(self, inner: Store, rival: bytes) -> None:
        self.inner = inner
        self.rival = rival
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write_if_unchanged(self, key: str, data: bytes, token: Any) -> None:
        found = self.inner.read_versioned(key)
        assert found is not None
        self.inner.write_if_unchanged(key, self.rival, found[1])
        self.inner.write_if_unchanged(key, data, token)


def test_rollback_refuses_when_the_pointer_moved_meanwhile(
    three_weeks: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = three_weeks
    store = open_store(url)
    entries = listed(url, capsys)
    middle, oldest = entries[1]["model_version"], entries[2]["model_version"]
    rival = artefacts.Pointer.from_json(store.read_bytes(artefacts.POINTER_KEY), "x")
    rival_bytes = artefacts.Pointer(
        middle, artefacts.model_key(middle), json.loads(
            store.read_bytes(artefacts.metadata_key(middle)))["model_sha256"],
        artefacts.metadata_key(middle),
        artefacts.sha256_hex(store.read_bytes(artefacts.metadata_key(middle))),
        rival.published_at,
    ).to_json()
    monkeypatch.setattr(models, "open_store",
                        lambda *args: RivalMovesPointer(open_store(*args), rival_bytes))
    caplog.clear()
    assert models.main([url, "rollback", oldest]) == models.EXIT_MOVED
    assert len(error_lines(caplog)) == 1 and "moved" in error_lines(caplog)[0]
    assert live_version(url) == middle, "the rival's move stands"
    assert store.list_keys(history.AUDIT_PREFIX) == []


def test_idempotent_rerun_publishes_nothing_and_force_trains(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert week(store_url, 0) == 0
    store = open_store(store_url)
    version = live_version(store_url)
    before = sorted(store.list_keys("models/"))
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert train_model.main([store_url, *ALWAYS_PUBLISH]) == 0
    infos = [r.getMessage() for r in caplog.records if "very tranche" in r.getMessage()]
    assert len(infos) == 1 and version in infos[0]
    assert sorted(store.list_keys("models/")) == before
    assert live_version(store_url) == version
    assert not [k for k in store.list_keys("models/") if "/realised/" in k]

    caplog.clear()
    assert train_model.main([store_url, *ALWAYS_PUBLISH, "--force"]) == 0
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("published model") for m in said), said
    assert not any("very tranche" in m for m in said)


def test_cli_forms_exit_statuses_and_one_error_line(three_weeks: str, aws_env: Dict[str, str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = three_weeks
    oldest = listed(url, capsys)[-1]["model_version"]
    env = stage_env(aws_env if url.startswith("s3://") else {})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "pipeline.models", url, *args], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=120)

    done = cli("list", "--json")
    assert done.returncode == 0 and len(json.loads(done.stdout)) == 3
    bad = cli("rollback", "20990101-000000-00000000")
    assert bad.returncode == models.EXIT_UNKNOWN
    assert [line for line in bad.stderr.splitlines() if line.strip()] == [
        line for line in bad.stderr.splitlines() if line.startswith("ERROR ")]
    assert len(bad.stderr.strip().splitlines()) == 1
    ok = cli("rollback", oldest, "--reason", "test")
    assert ok.returncode == 0, ok.stderr
    assert "ERROR" not in ok.stderr and "rolled back" in ok.stderr
    assert live_version(url) == oldest
    helped = cli("--help")
    assert helped.returncode == 0 and "exit status" in helped.stdout
    unavailable = subprocess.run(
        [PYTHON, "-m", "pipeline.models", "s3://no-such-bucket-ttd", "--store-attempts", "1",
         "list"], cwd=REPO_ROOT, env=stage_env(aws_env), capture_output=True, text=True,
        timeout=120)
    assert unavailable.returncode == models.EXIT_STORE
    assert unavailable.stderr.startswith("ERROR ") and len(unavailable.stderr.splitlines()) == 1


def test_every_model_version_is_a_safe_key() -> None:
    assert history.valid_version("20261121-003000-1a2b3c4d")
    for bad in ("", "..", "a/b", "../x", "latest.json", "x" * 200, "a b"):
        assert not history.valid_version(bad)
    key = history.realised_key("v1", "datasets/time_to_dispatch_2026-11-20T23:00:00.csv", "ab" * 32)
    assert key == "models/v1/realised/time_to_dispatch_2026-11-20T23:00:00-abababab.json"


def test_the_api_exposes_held_out_and_predecessor_realised_mae(
    local_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.testclient import TestClient

    from tests.api_support import make_app

    assert week(local_url, 0) == 0
    assert week(local_url, 1) == 0
    newest, first = listed(local_url, capsys)
    store = open_store(local_url)
    meta = json.loads(store.read_bytes(artefacts.metadata_key(newest["model_version"])))
    with TestClient(make_app(store)) as client:
        info = client.get("/api/v0.1/model").json()
        text = client.get("/metrics").text
    assert info["model_version"] == newest["model_version"]
    assert info["heldout_mae"] == newest["heldout_mae"] == meta["metrics"]["held_out"][
        "overall"]["mae"]
    assert info["previous_model_version"] == first["model_version"]
    assert info["previous_realised_mae"] == first["realised_mae"] is not None
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("ttd_model_heldout_mae_seconds",
                    (("model_version", newest["model_version"]),))] == newest["heldout_mae"] * 3600
    assert samples[("ttd_model_previous_realised_mae_seconds",
                    (("model_version", newest["model_version"]),
                     ("previous_model_version", first["model_version"])))] == \
        first["realised_mae"] * 3600


def test_the_api_leaves_accuracy_unknown_for_a_model_without_it(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from tests.api_support import make_app, new_store

    with TestClient(make_app(new_store(tmp_path))) as client:
        info = client.get("/api/v0.1/model").json()
        text = client.get("/metrics").text
    assert info["heldout_mae"] is None and info["previous_realised_mae"] is None
    assert "ttd_model_heldout_mae_seconds" not in text
    assert "ttd_model_previous_realised_mae_seconds" not in text


def rolled_back_lines(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if "rolled back from" in r.getMessage()]


def train_again(url: str, caplog: pytest.LogCaptureFixture, *options: str) -> int:
    caplog.set_level(logging.INFO)
    caplog.clear()
    return train_model.main([url, *ALWAYS_PUBLISH, *options])


def test_a_rollback_sticks_on_its_tranche_until_a_new_tranche_or_force(
    three_weeks: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    url = three_weeks
    store = open_store(url)
    newest, middle, _ = (e["model_version"] for e in listed(url, capsys))
    assert models.main([url, "rollback", middle, "--reason", "odd curves", "--by", "alice"]) == 0
    objects = sorted(store.list_keys("models/"))

    # The weekly run (and any re-run) on the tranche the operator rolled back from.
    for _ in range(2):
        assert train_again(url, caplog) == 0
        [said] = rolled_back_lines(caplog)
        assert said.startswith("nothing published: ")
        assert all(word in said for word in ("alice", newest, middle, "odd curves",
                                             "a new tranche or --force retrains"))
        audit = json.loads(store.read_bytes(store.list_keys(history.AUDIT_PREFIX)[0]))
        assert audit["at"] in said
        assert live_version(url) == middle
        assert sorted(store.list_keys("models/")) == objects, "nothing written, not even scores"

    # The list and show say so.
    entries = {e["model_version"]: e for e in listed(url, capsys)}
    assert entries[newest]["rollbacks_from"][0]["by"] == "alice"
    assert models.main([url, "show", newest]) == 0
    shown = capsys.readouterr().out
    assert "rolled back from" in shown and "alice" in shown and "--force" in shown

    # --force retrains on it; then the live model is trained on it, and re-runs change nothing.
    assert train_again(url, caplog, "--force") == 0
    forced = live_version(url)
    assert forced not in (newest, middle)
    assert train_again(url, caplog) == 0
    assert live_version(url) == forced and not rolled_back_lines(caplog)


def test_a_new_tranche_after_a_rollback_trains_as_usual(
    three_weeks: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    url = three_weeks
    newest, middle, _ = (e["model_version"] for e in listed(url, capsys))
    assert models.main([url, "rollback", middle, "--reason", "odd", "--by", "bob"]) == 0
    caplog.set_level(logging.INFO)
    assert week(url, 3) == 0
    assert live_version(url) not in (newest, middle)
    previous = artefacts.load_latest(open_store(url)).metadata.previous_model
    assert previous is not None and previous.model_version == middle


def test_a_second_rollback_keeps_the_hold_and_rolling_forward_lifts_it(
    three_weeks: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    url = three_weeks
    newest, middle, oldest = (e["model_version"] for e in listed(url, capsys))
    assert models.main([url, "rollback", middle, "--by", "alice"]) == 0
    assert models.main([url, "rollback", oldest, "--by", "bob"]) == 0
    assert train_again(url, caplog) == 0
    assert live_version(url) == oldest
    [said] = rolled_back_lines(caplog)
    assert "alice" in said and newest in said, "the rollback away from this tranche's model"
    # The operator rolls forward to the model of the newest tranche: the ordinary re-run rule.
    assert models.main([url, "rollback", newest, "--by", "carol"]) == 0
    assert train_again(url, caplog) == 0
    assert live_version(url) == newest and not rolled_back_lines(caplog)
    assert any("very tranche" in r.getMessage() for r in caplog.records)


def test_a_redelivered_identical_tranche_stays_rolled_back_and_a_corrected_one_trains(
    three_weeks: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    url = three_weeks
    store = open_store(url)
    newest, middle, _ = (e["model_version"] for e in listed(url, capsys))
    assert models.main([url, "rollback", middle, "--by", "alice"]) == 0
    newest_key = tranche_key((FIRST_WEEK + timedelta(weeks=2)).isoformat())
    same = store.read_bytes(newest_key)
    # The same bytes again, under the same key and under a later one.
    store.write_bytes(newest_key, same)
    assert train_again(url, caplog) == 0 and rolled_back_lines(caplog)
    later = tranche_key((FIRST_WEEK + timedelta(weeks=2, hours=1)).isoformat())
    store.write_bytes(later, same)
    assert train_again(url, caplog) == 0 and rolled_back_lines(caplog)
    assert live_version(url) == middle
    # A corrected tranche (other bytes) is new data: it trains.
    store.write_bytes(later, simulate_tranche(400, seed=99, week=2).to_csv())
    assert train_again(url, caplog) == 0 and not rolled_back_lines(caplog)
    assert live_version(url) not in (newest, middle)


def test_a_rollback_recorded_before_the_tranche_was_noted_still_sticks(
    three_weeks: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    url = three_weeks
    store = open_store(url)
    middle = listed(url, capsys)[1]["model_version"]
    assert models.main([url, "rollback", middle, "--by", "alice"]) == 0
    [key] = store.list_keys(history.AUDIT_PREFIX)
    record = json.loads(store.read_bytes(key))
    assert record["from_tranche"]["sha256"]
    del record["from_tranche"]
    store.write_bytes(key, json.dumps(record).encode())
    assert train_again(url, caplog) == 0 and rolled_back_lines(caplog)
    assert live_version(url) == middle


def test_a_rollback_survives_the_stage_as_bodywork_and_the_schedule_run_it(
    local_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for index in range(2):
        assert week(local_url, index) == 0
    newest, oldest = (e["model_version"] for e in listed(local_url, capsys))
    assert models.main([local_url, "rollback", oldest, "--by", "alice"]) == 0
    done = subprocess.run([PYTHON, "train_model.py", local_url], cwd=REPO_ROOT / "pipeline",
                          env=stage_env({}), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "rolled back from" in line]
    assert len(said) == 1 and " INFO " in said[0] and "alice" in said[0], done.stderr
    assert live_version(local_url) == oldest


def test_show_lists_the_busiest_codes_of_a_big_catalogue_and_says_how_many_more(
    local_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    codes = tuple(f"P{i:03d}" for i in range(models.SHOWN_CODES + 10))
    tranche = simulate_tranche(1200, seed=5, product_codes=codes)
    open_store(local_url).write_bytes(tranche_key(FIRST_WEEK.isoformat()), tranche.to_csv())
    assert train_model.main([local_url, "--no-report"]) == 0
    capsys.readouterr()
    assert models.main([local_url, "show", live_version(local_url)]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_code = [line for line in lines if line.startswith("    P")]
    assert len(per_code) == models.SHOWN_CODES
    [more] = [line for line in lines if line.startswith("    ... and ")]
    assert "and 10 more product codes" in more and "--json" in more
    [rows] = [line for line in lines if line.startswith("  rows")]
    assert "and 10 more product codes (30 in all)" in rows and len(rows) < 1000


def test_show_prints_the_metrics_by_basis_and_the_realised_accuracy_of_later_weeks(
    three_weeks: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = three_weeks
    store = open_store(url)
    oldest = listed(url, capsys)[-1]["model_version"]
    assert models.main([url, "rollback", oldest, "--by", "alice"]) == 0
    assert week(url, 3) == 0  # the oldest model, live again, is scored on week 3 as well
    meta = json.loads(store.read_bytes(artefacts.metadata_key(oldest)))
    product = meta["metrics"]["held_out"]["by_basis"]["product"]
    capsys.readouterr()
    assert models.main([url, "show", oldest]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_basis = next(line for line in lines if line.strip().startswith("by basis"))
    assert (f"product: MAE {product['mae']:.4f} h, R² {product['r2']:.4f}, p90 coverage "
            f"{product['coverage_p90']:.3f} on {product['rows']} rows") in by_basis
    assert "pooled: no rows" in by_basis
    start = next(i for i, line in enumerate(lines) if "realised on later tranches" in line)
    later = lines[start + 1:start + 3]
    records = sorted((json.loads(store.read_bytes(k)) for k in store.list_keys(
        f"models/{oldest}/realised/")), key=lambda r: r["tranche"]["key"])
    assert len(records) == 2
    for line, record in zip(later, records):
        assert history.tranche_stem(record["tranche"]["key"]) in line
        assert f"MAE {record['mae']:.4f} h, R² {record['r2']:.4f}" in line
        basis = record["by_basis"]["product"]
        assert f"product: MAE {basis['mae']:.4f} h" in line and f"on {basis['rows']} rows" in line
