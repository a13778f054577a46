"""/metrics: requests and latency by endpoint and status, predictions, the model and its age."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from pipeline.api.app import refresh_once
from pipeline.api.metrics import LATENCY_BUCKETS, Series
from pipeline.artefacts import load_latest
from tests.api_support import BATCH, SINGLE, make_app, new_store, publish_model, rows

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
        version = publish_model(store, seed=4)
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
