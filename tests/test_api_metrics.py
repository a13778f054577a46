"""/metrics: requests and latency by endpoint and status, predictions, the model and its age."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from pipeline.api.app import refresh_once
from pipeline.api.metrics import LATENCY_BUCKETS, Series
from pipeline.api.serving import RefreshOutcome
from pipeline.artefacts import POINTER_KEY, load_latest
from testing_support.models import model_bytes
from tests.api_support import BATCH, SINGLE, make_app, new_store, publish_fitted, publish_raw, rows

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    """Every sample of a scrape, by name and sorted labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_requests_latency_predictions_and_model(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    version = load_latest(store).version
    app = make_app(store)
    with TestClient(app) as client:
        for orders in (1, 2, 3):
            client.post(SINGLE, json={"product_code": "SKU001", "orders_placed": orders})
        client.post(SINGLE, json={"product_code": "nope", "orders_placed": 1})
        client.post(BATCH, json=rows([("SKU002", 5)] * 7))
        client.get("/health")
        client.get("/no/such/path/12345")
        samples = scrape(client)
    single_ok = (("endpoint", SINGLE), ("status", "200"))
    assert samples[("ttd_http_requests_total", single_ok)] == 3
    assert samples[("ttd_http_requests_total", (("endpoint", SINGLE), ("status", "422")))] == 1
    assert samples[("ttd_http_requests_total", (("endpoint", BATCH), ("status", "200")))] == 1
    assert samples[("ttd_http_requests_total", (("endpoint", "/health"), ("status", "200")))] == 1
    assert samples[("ttd_http_requests_total", (("endpoint", "other"), ("status", "404")))] == 1
    assert samples[("ttd_http_request_duration_seconds_count", single_ok)] == 3
    inf_bucket = (("endpoint", SINGLE), ("le", "+Inf"), ("status", "200"))
    assert samples[("ttd_http_request_duration_seconds_bucket", inf_bucket)] == 3
    assert samples[("ttd_http_request_duration_seconds_sum", single_ok)] > 0
    assert samples[("ttd_predictions_total", (("endpoint", SINGLE),))] == 3
    assert samples[("ttd_predictions_total", (("endpoint", BATCH),))] == 7
    assert samples[("ttd_model_info", (("model_version", version),))] == 1
    assert samples[("ttd_model_age_seconds", ())] > 0
    assert samples[("ttd_model_loaded_timestamp_seconds", ())] > 0
    assert not any("12345" in str(labels) for _, labels in samples)


def test_model_version_and_refresh_outcomes_follow_a_swap(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    app = make_app(store)
    with TestClient(app) as client:
        refresh_once(app.state)
        version = publish_fitted(store, seed=4)
        refresh_once(app.state)
        samples = scrape(client)
    assert samples[("ttd_model_info", (("model_version", version),))] == 1
    assert len([key for key in samples if key[0] == "ttd_model_info"]) == 1
    assert samples[("ttd_model_refresh_checks_total", (("outcome", "unchanged"),))] == 1
    assert samples[("ttd_model_refresh_checks_total", (("outcome", "swapped"),))] == 1


@pytest.mark.parametrize("index", range(len(LATENCY_BUCKETS)))
def test_a_duration_on_a_bucket_bound_counts_in_that_bucket(index: int) -> None:
    series = Series(len(LATENCY_BUCKETS) + 1)
    bound = LATENCY_BUCKETS[index]
    series.observe(bound)
    series.observe(bound * 1.000001)
    assert series.buckets[index] == 1
    assert series.buckets[index + 1] == 1
    assert series.count == 2


def test_recorded_quality_is_exported_for_the_alert_rules(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    version = publish_fitted(store, seed=4, extra={
        "metrics": {"held_out": {"overall": {"mae": 0.42, "coverage_p90": 0.875}}},
        "options": {"thresholds": {"coverage_min": 0.85}},
        "previous_model": {"model_version": "20261120-000000-old", "heldout_mae": 0.38,
                           "realised_mae": 0.61},
    })
    with TestClient(make_app(store)) as client:
        samples = scrape(client)
    served = (("model_version", version),)
    replaced = (("model_version", version), ("previous_model_version", "20261120-000000-old"))
    assert samples[("ttd_model_heldout_mae_seconds", served)] == 0.42 * 3600
    assert samples[("ttd_model_heldout_coverage_p90", served)] == 0.875
    assert samples[("ttd_model_coverage_p90_minimum", served)] == 0.85
    assert samples[("ttd_model_previous_realised_mae_seconds", replaced)] == 0.61 * 3600
    assert samples[("ttd_model_previous_heldout_mae_seconds", replaced)] == 0.38 * 3600
    assert samples[("ttd_model_refresh_behind", ())] == 0


def test_a_model_without_those_records_exports_none_of_them(tmp_path: Path) -> None:
    with TestClient(make_app(new_store(tmp_path))) as client:
        names = {name for name, _ in scrape(client)}
    assert not names & {"ttd_model_heldout_coverage_p90", "ttd_model_coverage_p90_minimum",
                        "ttd_model_previous_realised_mae_seconds",
                        "ttd_model_previous_heldout_mae_seconds"}


def test_refresh_behind_while_the_pointer_names_a_refused_model(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    good_pointer = store.read_bytes(POINTER_KEY)
    app = make_app(store)
    with TestClient(app) as client:
        publish_raw(store, "20260101-000000-badsum00", model_bytes(3), "0" * 64)
        behind = []
        for _ in range(2):  # rejected, then unchanged: the replica is still behind the pointer
            refresh_once(app.state)
            behind.append(scrape(client)[("ttd_model_refresh_behind", ())])
        store.write_bytes(POINTER_KEY, good_pointer)  # rolled back to the model it serves
        assert refresh_once(app.state).outcome == "unchanged"
        behind.append(scrape(client)[("ttd_model_refresh_behind", ())])
        app.state.apply(RefreshOutcome(app.state.serving, "failed", "store unreachable", None))
        behind.append(scrape(client)[("ttd_model_refresh_behind", ())])
    assert behind == [1, 1, 0, 1]
