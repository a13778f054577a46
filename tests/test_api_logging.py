"""The request log: one JSON line per request, with the request id, runtime and summaries."""
from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pipeline.api.requestlog import RequestLog
from pipeline.artefacts import load_latest
from tests.api_support import BATCH, SINGLE, log_lines, make_app, new_store, rows

KEY = "k-9f8e7d6c5b4a"


def test_one_line_per_request_with_id_runtime_input_and_prediction(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    version = load_latest(store).version
    log_path = tmp_path / "requests.log"
    with TestClient(make_app(store, log_path)) as client:
        ok = client.post(SINGLE, json={"product_code": "SKU001", "orders_placed": 112},
                         headers={"X-Request-ID": "abc-1"})
        bad = client.post(SINGLE, json={"product_code": "SKU001", "orders_placed": -3})
        batch = client.post(BATCH, json=rows([("SKU001", 10), ("SKU002", 20), ("SKU001", 30)]))
        health = client.get("/health")
    lines = log_lines(log_path)
    assert [line["status"] for line in lines] == [200, 422, 200, 200]
    first, second, third, fourth = lines
    assert first["request_id"] == "abc-1" == ok.headers["x-request-id"]
    assert second["request_id"] == bad.headers["x-request-id"]
    assert third["request_id"] == batch.headers["x-request-id"]
    assert fourth["request_id"] == health.headers["x-request-id"]
    for line in lines:
        datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
        assert line["duration_ms"] >= 0
        assert line["model_version"] == version
        assert line["event"] == "request"
    assert first["input"] == {"product_code": "SKU001", "orders_placed": 112.0}
    assert first["prediction"] == ok.json()["est_hours_to_dispatch"]
    assert (first["method"], first["path"], first["level"]) == ("POST", SINGLE, "info")
    assert second["errors"] == [{"type": "greater_than_equal", "loc": ["body", "orders_placed"]}]
    assert second["level"] == "warning"
    estimates = batch.json()["est_hours_to_dispatch"]
    assert third["input"] == {"rows": 3, "product_codes": 2}
    assert third["prediction"] == {
        "min": min(estimates), "mean": pytest.approx(sum(estimates) / 3), "max": max(estimates)
    }
    assert fourth["path"] == "/health"


def test_the_api_key_never_reaches_any_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = new_store(tmp_path)
    log_path = tmp_path / "requests.log"
    with caplog.at_level(logging.DEBUG):
        with TestClient(make_app(store, log_path, api_key=KEY)) as client:
            body = {"product_code": "SKU001", "orders_placed": 1}
            assert client.post(SINGLE, json=body, headers={"X-API-Key": KEY}).status_code == 200
            wrong = client.post(SINGLE, json=body, headers={"X-API-Key": KEY[:-1]})
            assert wrong.status_code == 401
            client.get("/health")
    text = log_path.read_text()
    assert len(text.splitlines()) == 3
    assert KEY not in text and KEY[:-1] not in text
    assert all(KEY[:-1] not in record.getMessage() for record in caplog.records)
    assert log_lines(log_path)[1]["status"] == 401


def test_fast_path_off_logs_the_same_fields(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    log_path = tmp_path / "requests.log"
    with TestClient(make_app(store, log_path, fast_path=False)) as client:
        client.post(SINGLE, json={"product_code": "SKU001", "orders_placed": 112})
        client.post(SINGLE, json={"product_code": "SKU001", "orders_placed": "x"})
    ok, bad = log_lines(log_path)
    assert ok["input"] == {"product_code": "SKU001", "orders_placed": 112.0}
    assert "prediction" in ok
    assert bad["errors"] == [{"type": "float_type", "loc": ["body", "orders_placed"]}]


def test_log_off_writes_nothing(tmp_path: Path) -> None:
    log = RequestLog("")
    log.open()
    log.write({"a": 1})
    log.close()
    assert not log.enabled
    assert list(tmp_path.iterdir()) == []


def test_lines_written_outside_a_loop_are_flushed_at_once(tmp_path: Path) -> None:
    log = RequestLog(str(tmp_path / "out.log"))
    log.open()
    log.write({"n": 1})
    assert log_lines(tmp_path / "out.log") == [{"n": 1}]
    log.close()


@pytest.mark.parametrize(
    "now, expected",
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1.9995, "1970-01-01T00:00:01.999Z"),
        (1_795_000_000.25, "2026-11-18T11:06:40.250Z"),
    ],
)
def test_timestamps_are_utc_with_milliseconds(now: float, expected: str) -> None:
    assert RequestLog("").timestamp(now) == expected
