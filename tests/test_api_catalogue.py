"""Serving at catalogue scale in process: basis, unknown parts, bounded bodies, the code list.

The columnar lookup and ``DispatchModel.from_json`` check an artefact with the format's one
checker, so they refuse alike (with the same message); what they accept, the lookup answers
exactly as the model does.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from pipeline.api.lookup import Lookup, prepare
from pipeline.artefacts import load_latest
from pipeline.model_format import CatalogueCurve, Curve, DispatchModel, ModelFormatError
from pipeline.store import Store
from testing_support.models import catalogue_artefact
from tests.api_support import BATCH, CODES, SINGLE, make_app, new_store, publish_raw, rows
from tests.oracles import answers, at
from tests.test_reliability_model import near_artefacts

MODEL = "/api/v0.1/model"
PAGE = "/api/v0.1/model/product_codes"
CATALOGUE = CatalogueCurve(Curve((0.0, 100.0), (2.0, 5.0)), Curve((0.0, 100.0), (6.0, 15.0)))
PROBES = [0.0, 3.0, 50.5, 112.0, 400.0, 1e6]


def pooled(store: Store, catalogue: bool = True, metadata: Any = None) -> DispatchModel:
    """Publish the store's model as format 3: SKU003 pooled, the rest product; the model."""
    model = load_latest(store).model
    bases = {code: "pooled" if code == "SKU003" else "product" for code in model.curves}
    found = dataclasses.replace(model, bases=bases, catalogue=CATALOGUE if catalogue else None)
    publish_raw(store, "20261201-000000-pooled00", found.to_json(), extra=metadata)
    return found


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A local store with a five-part format 2 model."""
    return new_store(tmp_path)


def test_a_five_part_model_answers_as_the_model_does(store: Store) -> None:
    model = load_latest(store).model
    pairs = [(code, orders) for code in CODES for orders in PROBES]
    with TestClient(make_app(store)) as client:
        singles = [client.post(SINGLE, json={"product_code": c, "orders_placed": o}).json()
                   for c, o in pairs]
        batch = client.post(BATCH, json=rows(pairs)).json()
        unknown = client.post(SINGLE, json={"product_code": "SKU999", "orders_placed": 3})
    for (code, orders), single in zip(pairs, singles):
        expected = answers(model, code, orders)
        assert (single["est_hours_to_dispatch"], single["p90_hours_to_dispatch"],
                single["extrapolated"]) == expected
    assert batch["est_hours_to_dispatch"] == [s["est_hours_to_dispatch"] for s in singles]
    assert unknown.status_code == 422
    listed = "'SKU001', 'SKU002', 'SKU003', 'SKU004' or 'SKU005'"
    assert unknown.json()["detail"] == [{
        "type": "literal_error", "loc": ["body", "product_code"],
        "msg": f"Input should be {listed}", "input": "SKU999", "ctx": {"expected": listed},
    }]


def test_an_unknown_code_with_a_bad_count_gets_both_issues(store: Store) -> None:
    with TestClient(make_app(store)) as client:
        response = client.post(SINGLE, json={"product_code": "SKU999", "orders_placed": -1})
    assert [(i["loc"], i["type"]) for i in response.json()["detail"]] == [
        (["body", "product_code"], "literal_error"),
        (["body", "orders_placed"], "greater_than_equal"),
    ]


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_batch_answers_its_known_rows_and_lists_the_unknown(
    store: Store, fast_path: bool
) -> None:
    pairs = [("SKU001", 10), ("NEW-1", 10), ("SKU002", 80), ("NEW-2", 5), ("NEW-1", 7)]
    with TestClient(make_app(store, fast_path=fast_path)) as client:
        body = client.post(BATCH, json=rows(pairs)).json()
        known = [client.post(SINGLE, json={"product_code": c, "orders_placed": o}).json()
                 for c, o in pairs if c.startswith("SKU")]
        broken = client.post(BATCH, json=rows([("NEW-1", 1), ("SKU001", "x")]))
    assert body["unknown_product_codes"] == [
        {"index": 1, "product_code": "NEW-1"}, {"index": 3, "product_code": "NEW-2"},
        {"index": 4, "product_code": "NEW-1"},
    ]
    for key in ("est_hours_to_dispatch", "p90_hours_to_dispatch", "extrapolated", "basis"):
        assert [body[key][i] for i in (1, 3, 4)] == [None, None, None]
        assert [body[key][i] for i in (0, 2)] == [single[key] for single in known]
    assert broken.status_code == 422
    assert [i["loc"] for i in broken.json()["detail"]] == [["body", 1, "orders_placed"]]


def test_basis_is_answered_and_counted_per_basis(store: Store) -> None:
    by_basis = {"product": {"mae": 0.4, "coverage_p90": 0.9, "rows": 120},
                "pooled": {"mae": 0.7, "coverage_p90": 0.88, "rows": 30}}
    pooled(store, metadata={"metrics": {"held_out": {"by_basis": by_basis}}})
    with TestClient(make_app(store)) as client:
        single = client.post(SINGLE, json={"product_code": "SKU003", "orders_placed": 3}).json()
        batch = client.post(BATCH, json=rows([("SKU001", 3), ("SKU003", 3)])).json()
        info = client.get(MODEL).json()
        page = client.get(PAGE, params={"limit": 3}).json()
    assert single["basis"] == "pooled"
    assert batch["basis"] == ["product", "pooled"]
    assert info["format_version"] == 3 and info["catalogue_curve"] is True
    assert info["bases"] == {
        "product": {"parts": 4, **by_basis["product"]}, "pooled": {"parts": 1, **by_basis["pooled"]}
    }
    assert [e["basis"] for e in page["product_codes"]] == ["product", "product", "pooled"]
    assert (page["total"], page["next_offset"]) == (5, 3)


def test_bases_are_null_where_neither_model_nor_metadata_records_them(store: Store) -> None:
    with TestClient(make_app(store)) as client:
        info = client.get(MODEL).json()
    empty = {"parts": None, "mae": None, "coverage_p90": None, "rows": None}
    assert info["bases"] == {"product": empty, "pooled": empty}
    assert info["catalogue_curve"] is False and info["unknown_products"] == "reject"


def test_unknown_parts_are_answered_from_the_catalogue_curve_on_request(store: Store) -> None:
    pooled(store)
    with TestClient(make_app(store, unknown_products="catalogue")) as client:
        single = client.post(SINGLE, json={"product_code": "NEW-1", "orders_placed": 50})
        batch = client.post(BATCH, json=rows([("NEW-1", 50), ("SKU001", 50)])).json()
    assert single.status_code == 200
    assert single.json()["basis"] == "catalogue"
    assert single.json()["est_hours_to_dispatch"] == at(CATALOGUE.curve, 50.0)
    assert single.json()["p90_hours_to_dispatch"] == at(CATALOGUE.bound, 50.0)
    assert single.json()["extrapolated"] is False
    assert batch["basis"] == ["catalogue", "product"]
    assert batch["est_hours_to_dispatch"][0] == single.json()["est_hours_to_dispatch"]
    assert batch["unknown_product_codes"] == [{"index": 0, "product_code": "NEW-1"}]
    with TestClient(make_app(store)) as client:
        assert client.post(SINGLE, json={"product_code": "NEW-1", "orders_placed": 50}
                           ).status_code == 422


def test_a_catalogue_answer_says_whether_it_extrapolates(store: Store) -> None:
    model = pooled(store)
    low = min(low for low, _ in model.ranges.values())
    high = max(high for _, high in model.ranges.values())
    probes = [low, (low + high) / 2, high, high + 1e-9, 4_000.0, 30_000.0]
    expected = [False, False, False, True, True, True]
    if low > 0:
        probes, expected = [0.0] + probes, [True] + expected
    with TestClient(make_app(store, unknown_products="catalogue")) as client:
        singles = [client.post(SINGLE, json={"product_code": "NEW-1", "orders_placed": orders})
                   for orders in probes]
        batch = client.post(BATCH, json=rows([("NEW-1", orders) for orders in probes])).json()
        info = client.get(MODEL).json()
    assert [answer.json()["extrapolated"] for answer in singles] == expected
    assert batch["extrapolated"] == expected
    assert batch["basis"] == ["catalogue"] * len(probes)
    assert info["orders_placed_range"] == {"min": low, "max": high}


def test_a_catalogue_answer_without_trained_ranges_leaves_extrapolated_null(
    store: Store
) -> None:
    model = dataclasses.replace(pooled(store), ranges={})
    publish_raw(store, "20261202-000000-noranges", model.to_json())
    with TestClient(make_app(store, unknown_products="catalogue")) as client:
        single = client.post(SINGLE, json={"product_code": "NEW-1", "orders_placed": 30_000})
        batch = client.post(BATCH, json=rows([("NEW-1", 30_000), ("SKU001", 3)])).json()
    assert single.json()["basis"] == "catalogue" and single.json()["extrapolated"] is None
    assert batch["extrapolated"] == [None, None]


def unknown_counted(client: TestClient) -> Dict[str, float]:
    """ttd_unknown_product_codes_total by its answer label, from a scrape."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {sample.labels["answer"]: sample.value for family in families
            for sample in family.samples if sample.name == "ttd_unknown_product_codes_total"}


@pytest.mark.parametrize("fast_path", [True, False])
def test_every_unknown_part_is_counted(store: Store, fast_path: bool) -> None:
    pooled(store)
    with TestClient(make_app(store, fast_path=fast_path)) as client:
        assert unknown_counted(client) == {"rejected": 0, "catalogue": 0}
        client.post(SINGLE, json={"product_code": "NEW-1", "orders_placed": 5})
        client.post(SINGLE, json={"product_code": "NEW-1", "orders_placed": -5})
        client.post(SINGLE, json={"product_code": "SKU001", "orders_placed": 5})
        client.post(BATCH, json=rows([("NEW-1", 5), ("SKU001", 5), ("NEW-2", 5)]))
        client.post(BATCH, json=rows([("NEW-1", 5), ("SKU001", -5)]))  # a 422: no row answered
        rejected = unknown_counted(client)
    with TestClient(make_app(store, unknown_products="catalogue", fast_path=fast_path)) as client:
        client.post(SINGLE, json={"product_code": "NEW-1", "orders_placed": 5})
        client.post(BATCH, json=rows([("NEW-1", 5), ("SKU001", 5), ("NEW-2", 5)]))
        answered = unknown_counted(client)
    assert rejected == {"rejected": 4, "catalogue": 0}
    assert answered == {"rejected": 0, "catalogue": 3}


def test_a_model_without_a_catalogue_curve_keeps_refusing_and_says_so(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    pooled(store, catalogue=False)
    with caplog.at_level(logging.WARNING, "pipeline.api"):
        app = make_app(store, unknown_products="catalogue")
    assert any("has none" in r.getMessage() for r in caplog.records)
    with TestClient(app) as client:
        response = client.post(SINGLE, json={"product_code": "NEW-1", "orders_placed": 50})
        batch = client.post(BATCH, json=rows([("NEW-1", 50)])).json()
    assert response.status_code == 422
    assert "no catalogue curve" in response.json()["detail"][0]["msg"]
    assert batch["est_hours_to_dispatch"] == [None]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app over a 30,000-part format 3 model."""
    store = new_store(tmp_path_factory.mktemp("big"))
    publish_raw(store, "20261201-000000-big00000", catalogue_artefact(30_000, seed=3))
    with TestClient(make_app(store)) as client:
        yield client


def test_a_big_models_422_is_bounded_and_offers_close_matches(big: TestClient) -> None:
    for typo, meant in [("P01234", "P001234"), ("p012345", "P012345"), ("P0123456", "P012345"),
                        ("P0213-45", "P021345")]:
        response = big.post(SINGLE, json={"product_code": typo, "orders_placed": 3})
        assert response.status_code == 422, response.text
        assert len(response.content) <= 4096
        issue = response.json()["detail"][0]
        assert issue["type"] == "literal_error"
        assert meant in issue["ctx"]["close_matches"][:5], issue
        assert issue["ctx"]["product_codes"] == 30_000
        assert issue["ctx"]["product_codes_path"] == PAGE
        assert "30000 product codes" in issue["msg"] and PAGE in issue["msg"]
    nothing = big.post(SINGLE, json={"product_code": "zz", "orders_placed": 3}).json()
    assert nothing["detail"][0]["ctx"]["close_matches"] == []


def test_a_big_models_schema_and_model_info_are_small(big: TestClient, store: Store) -> None:
    schema = big.get("/openapi.json").content
    with TestClient(make_app(store)) as small:
        assert small.get("/openapi.json").content == schema
    assert len(schema) <= 65536
    info = big.get(MODEL)
    assert len(info.content) <= 65536
    assert info.json()["product_codes"] == 30_000
    assert info.json()["bases"]["pooled"]["parts"] == 10_000


def test_the_code_list_pages_through_every_code_in_order(big: TestClient) -> None:
    seen: List[str] = []
    offset: Any = 0
    while offset is not None:
        page = big.get(PAGE, params={"offset": offset, "limit": 1000}).json()
        assert len(page["product_codes"]) <= 1000 and page["total"] == 30_000
        seen.extend(entry["product_code"] for entry in page["product_codes"])
        offset = page["next_offset"]
    assert seen == [f"P{i:06d}" for i in range(30_000)]
    assert big.get(PAGE, params={"offset": 29_999}).json()["next_offset"] is None
    assert big.get(PAGE, params={"offset": 40_000}).json()["product_codes"] == []
    for params in ({"limit": 1001}, {"limit": 0}, {"offset": -1}, {"offset": "x"}):
        response = big.get(PAGE, params=params)
        assert response.status_code == 422, params
        assert response.json()["detail"][0]["loc"][0] == "query"


@pytest.mark.parametrize("name, value, bound", [
    ("offset", "58504253913700985382595505160192", "1000000000"),
    ("offset", str(2**63), "1000000000"),
    ("offset", "1000000001", "1000000000"),
    ("limit", "58504253913700985382595505160192", "1000"),
])
def test_paging_parameters_are_bounded_and_a_huge_one_is_a_422(
    big: TestClient, name: str, value: str, bound: str
) -> None:
    params = {"offset": "0", "limit": "949", name: value}
    response = big.get(PAGE, params=params)
    assert response.status_code == 422, response.text
    [issue] = response.json()["detail"]
    assert issue["loc"] == ["query", name]
    assert issue["type"] == "less_than_equal" and bound in issue["msg"]
    last = big.get(PAGE, params={"offset": "1000000000", "limit": "949"})
    assert last.status_code == 200 and last.json()["product_codes"] == []


def test_a_big_models_answers_equal_its_curves(big: TestClient) -> None:
    document = json.loads(catalogue_artefact(30_000, seed=3))
    for code in ("P000000", "P012345", "P029999"):
        spec = document["curves"][code]
        curve = Curve(tuple(spec["knots"]), tuple(spec["values"]))
        bound = Curve(tuple(spec["p90"]["knots"]), tuple(spec["p90"]["values"]))
        pairs = [(code, orders) for orders in PROBES]
        batch = big.post(BATCH, json=rows(pairs)).json()
        for i, orders in enumerate(PROBES):
            answer = big.post(SINGLE, json={"product_code": code, "orders_placed": orders}).json()
            assert answer["est_hours_to_dispatch"] == at(curve, orders)
            assert answer["p90_hours_to_dispatch"] == max(at(bound, orders), at(curve, orders))
            assert answer["basis"] == spec["basis"]
            assert batch["est_hours_to_dispatch"][i] == answer["est_hours_to_dispatch"]
            assert batch["p90_hours_to_dispatch"][i] == answer["p90_hours_to_dispatch"]


def _compare(data: bytes) -> None:
    """The service's parser and from_json share the format's one checker: an artefact is
    refused by both with the same message, or both accept it and answer alike."""
    metadata = json.dumps({"model_sha256": "x"}).encode()
    try:
        model = DispatchModel.from_json(data)
    except ModelFormatError as refused:
        with pytest.raises(ModelFormatError) as refused_too:
            prepare(data, metadata, "x")
        assert str(refused_too.value) == str(refused)
        return
    lookup = Lookup(prepare(data, metadata, "x"))
    assert lookup.codes == model.product_codes
    for i, code in enumerate(lookup.codes):
        for orders in PROBES:
            estimate, upper, extrapolated = answers(model, code, orders)
            assert lookup.estimate(i, orders) == estimate
            assert lookup.upper(i, orders, estimate) == upper
            assert lookup.extrapolated(i, orders) == extrapolated
            assert lookup.basis(i) == model.bases.get(code)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=near_artefacts())
def test_the_service_and_the_model_refuse_alike_and_answer_alike(
    document: Dict[str, Any]
) -> None:
    data = json.dumps(document).encode()
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        assume(False)  # integers beyond 64 bits or NaN: orjson refuses the document outright
    _compare(data)


def test_the_lookup_checks_format_3_as_the_model_does(store: Store) -> None:
    base = json.loads(pooled(store).to_json())
    cases: List[Dict[str, Any]] = [base]
    for change in ("guess", None, 3):
        doc = json.loads(json.dumps(base))
        doc["curves"]["SKU002"]["basis"] = change
        cases.append(doc)
    for catalogue in ({"knots": [0.0, 1.0], "values": [1.0, 2.0]},
                      {"knots": [0.0, 1.0], "values": [1.0, 2.0],
                       "p90": {"knots": [0.0, 1.0], "values": [0.5, 9.0]}}, [1]):
        doc = json.loads(json.dumps(base))
        doc["catalogue"] = catalogue
        cases.append(doc)
    for doc in cases:
        _compare(json.dumps(doc).encode())
