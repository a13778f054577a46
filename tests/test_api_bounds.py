"""The p90 bound, extrapolation and basis through the API: answers, format 1 models, listings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from starlette.testclient import TestClient

from pipeline.api.app import refresh_once
from pipeline.artefacts import load_latest
from pipeline.store import Store
from tests.api_support import BATCH, CODES, SINGLE, make_app, new_store, publish_fitted, rows
from tests.oracles import answers

MODEL = "/api/v0.1/model"
CODES_PAGE = "/api/v0.1/model/product_codes"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A local store with a format 2 model (bounds and ranges)."""
    return new_store(tmp_path_factory.mktemp("bounds"))


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi"])
def client(request: pytest.FixtureRequest, store: Store) -> Iterator[TestClient]:
    """A client of the app, predictions through the fast path or through FastAPI."""
    with TestClient(make_app(store, fast_path=request.param)) as test_client:
        yield test_client


def probes(store: Store) -> List[Dict[str, Any]]:
    """Rows inside, at the ends of and outside every code's trained range."""
    model = load_latest(store).model
    found = []
    for code in CODES:
        low, high = model.ranges[code]
        for orders in (0, low, (low + high) / 2, high, high + 0.5, 10 * high + 7, 1e9):
            found.append({"product_code": code, "orders_placed": orders})
    return found


def test_single_answers_carry_the_bound_and_the_extrapolated_flag(
    client: TestClient, store: Store
) -> None:
    model = load_latest(store).model
    seen = set()
    for row in probes(store):
        body = client.post(SINGLE, json=row).json()
        code, orders = row["product_code"], row["orders_placed"]
        assert list(body) == [
            "est_hours_to_dispatch", "p90_hours_to_dispatch", "extrapolated", "basis",
            "model_version",
        ]
        assert body["basis"] is None  # a format 2 model records no basis
        estimate, upper, _ = answers(model, code, orders)
        assert body["est_hours_to_dispatch"] == estimate
        assert body["p90_hours_to_dispatch"] == upper
        assert body["p90_hours_to_dispatch"] >= body["est_hours_to_dispatch"]
        low, high = model.ranges[code]
        assert body["extrapolated"] is (not low <= orders <= high)
        seen.add(body["extrapolated"])
    assert seen == {True, False}


def test_batch_answers_are_parallel_arrays_equal_to_the_single_answers(
    client: TestClient, store: Store
) -> None:
    batch = probes(store)
    body = client.post(BATCH, json=batch).json()
    singles = [client.post(SINGLE, json=row).json() for row in batch]
    for key in ("est_hours_to_dispatch", "p90_hours_to_dispatch", "extrapolated", "basis"):
        assert body[key] == [single[key] for single in singles]
    assert body["unknown_product_codes"] == []
    assert body["model_version"] == singles[0]["model_version"]


def test_an_empty_batch_gets_empty_arrays(client: TestClient) -> None:
    response = client.post(BATCH, json=[])
    assert response.status_code == 200
    body = response.json()
    assert body["est_hours_to_dispatch"] == body["p90_hours_to_dispatch"] == []
    assert body["extrapolated"] == []
    assert body["model_version"]


def test_the_code_listing_gives_each_codes_trained_range(client: TestClient, store: Store) -> None:
    model = load_latest(store).model
    body = client.get(MODEL).json()
    lows, highs = zip(*model.ranges.values())
    assert body["orders_placed_range"] == {"min": min(lows), "max": max(highs)}
    assert body["coverage_p90"] == {"overall": None}
    listed = client.get(CODES_PAGE).json()["product_codes"]
    assert listed == [
        {"product_code": code, "orders_placed_range": {"min": low, "max": high},
         "basis": None, "coverage_p90": None}
        for code, (low, high) in sorted(model.ranges.items())
    ]


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_format_1_model_still_serves_with_null_bound_and_flag(
    tmp_path: Path, fast_path: bool
) -> None:
    store = new_store(tmp_path, version=1)
    assert load_latest(store).model.bounds == {}
    batch = rows([("SKU001", 3), ("SKU002", 1e6)])
    with TestClient(make_app(store, fast_path=fast_path)) as client:
        single = client.post(SINGLE, json=batch[1])
        many = client.post(BATCH, json=batch)
        info = client.get(MODEL).json()
    assert single.status_code == many.status_code == 200
    assert single.json()["p90_hours_to_dispatch"] is None
    assert single.json()["extrapolated"] is None
    assert single.json()["est_hours_to_dispatch"] > 0
    assert many.json()["p90_hours_to_dispatch"] == [None, None]
    assert many.json()["extrapolated"] == [None, None]
    assert info["orders_placed_range"] is None
    assert info["format_version"] == 1


def test_a_swap_from_format_1_to_format_2_brings_the_bound(tmp_path: Path) -> None:
    store = new_store(tmp_path, version=1)
    app = make_app(store)
    row = {"product_code": "SKU001", "orders_placed": 50}
    with TestClient(app) as client:
        before = client.post(SINGLE, json=row).json()
        publish_fitted(store, seed=3)
        assert refresh_once(app.state).outcome == "swapped"
        after = client.post(SINGLE, json=row).json()
    assert before["p90_hours_to_dispatch"] is None
    assert after["p90_hours_to_dispatch"] >= after["est_hours_to_dispatch"]
    assert after["extrapolated"] is False


@pytest.mark.parametrize(
    "held_out, overall, sku001",
    [
        ({"overall": {"mae": 0.4, "coverage_p90": 0.9},
          "per_product_code": {"SKU001": {"coverage_p90": 0.87}, "SKU002": {"mae": 0.3}}},
         0.9, 0.87),
        ({"coverage_p90": 0.91, "per_product_code": {"SKU001": {"coverage_p90": 0.88}}},
         0.91, 0.88),
        ({"overall": {"coverage_p90": "0.9"}, "per_product_code": ["SKU001"]}, None, None),
        ({"overall": {"coverage_p90": float("nan")}}, None, None),
    ],
)
def test_model_endpoint_reads_held_out_coverage_from_the_metadata(
    tmp_path: Path, held_out: Dict[str, Any], overall: Any, sku001: Any
) -> None:
    store = new_store(tmp_path)
    publish_fitted(store, seed=4, extra={"metrics": {"held_out": held_out}})
    with TestClient(make_app(store)) as client:
        body = json.loads(client.get(MODEL).text)
        listed = json.loads(client.get(CODES_PAGE).text)["product_codes"]
    assert body["coverage_p90"] == {"overall": overall}
    coverage = {entry["product_code"]: entry["coverage_p90"] for entry in listed}
    assert coverage["SKU001"] == sku001
    assert coverage["SKU002"] is None
    assert set(coverage) == set(CODES)


def test_new_fields_are_in_the_openapi_document(store: Store) -> None:
    with TestClient(make_app(store)) as client:
        document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    single = schemas["PredictionResponse"]
    assert set(single["required"]) == {
        "est_hours_to_dispatch", "p90_hours_to_dispatch", "extrapolated", "basis",
        "model_version",
    }
    assert "90%" in single["properties"]["p90_hours_to_dispatch"]["description"]
    batch = schemas["BatchPredictionResponse"]["properties"]
    assert batch["p90_hours_to_dispatch"]["type"] == batch["extrapolated"]["type"] == "array"
    assert batch["basis"]["type"] == batch["unknown_product_codes"]["type"] == "array"
    info = schemas["ModelInfo"]["properties"]
    assert {"orders_placed_range", "coverage_p90", "bases", "product_codes_path"} <= set(info)
    assert "more_errors" in schemas["ValidationErrorResponse"]["properties"]
