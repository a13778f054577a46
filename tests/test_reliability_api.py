"""Hostile API input (issue 5, item 1): the published OpenAPI schema fuzzed, and Hypothesis
on the request validation.

Schemathesis loads ``/openapi.json`` from the app in process (ASGI) and generates
valid and invalid requests for every operation; every applicable check runs on every
response: no server error, status code and content type documented, headers and
body match the schema, invalid data rejected (4xx), valid data accepted (2xx), and,
with an API key set, a request without it refused. Hypothesis then drives the
prediction endpoints directly: any finite valid row gets a finite, non-negative
estimate equal to the model's (single and batch agree); anything else gets a 422
that names a field, never a 5xx and never a non-finite number.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks as st_checks
from starlette.testclient import TestClient

from pipeline.api.app import create_app
from pipeline.api.schemas import ORDERS_PLACED_MAX, PRODUCT_CODE_MAX_LENGTH
from pipeline.api.settings import ServeSettings
from pipeline.artefacts import LoadedModel, load_latest
from pipeline.model_format import CatalogueCurve, Curve
from pipeline.store import open_store
from testing_support.models import publish_model, simple_model, with_test_bounds
from tests.oracles import answers as model_answers

SINGLE = "/api/v0.1/time_to_dispatch"
BATCH = "/api/v0.1/time_to_dispatch/batch"
API_KEY = "reliability-test-key"
MAX_BATCH_ROWS = 20
FUZZ_EXAMPLES = 15
FIXTURE_OK = [HealthCheck.function_scoped_fixture]
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
    st_checks.positive_data_acceptance,
    st_checks.missing_required_header,
    st_checks.unsupported_method,
]
# A schema-valid code the model does not know is a documented 422 unless the service answers
# unknown parts from the catalogue curve (as the open app below does).
REJECTING_CHECKS = [check for check in CHECKS if check is not st_checks.positive_data_acceptance]


def _loaded(root: Path) -> LoadedModel:
    store = open_store(str(root))
    model = simple_model(1.0, codes=("SKU001", "SKU002", "SKU003"))
    bounded = with_test_bounds(model, {code: (10.0, 150.0) for code in model.curves})
    catalogue = CatalogueCurve(Curve((0.0, 100.0), (1.0, 3.0)), Curve((0.0, 100.0), (3.0, 9.0)))
    bases = {code: "pooled" if code == "SKU003" else "product" for code in model.curves}
    publish_model(store, dataclasses.replace(bounded, bases=bases, catalogue=catalogue))
    return load_latest(store)


def _app(root: Path, api_key: str = "", unknown_products: str = "reject") -> Any:
    settings = ServeSettings(
        request_log="", max_batch_rows=MAX_BATCH_ROWS, api_key=api_key or None,
        model_refresh_seconds=0, unknown_products=unknown_products,
    )
    store = open_store(str(root))
    return create_app(settings, store, load_latest(store))


# The schema must exist at collection time: schemathesis' lazy loader (from_fixture) reads a
# node attribute that pytest 9 no longer has. The store lives as long as the test session.
_STORE_DIR = tempfile.TemporaryDirectory(prefix="reliability-api-")
MODEL_ROOT = Path(_STORE_DIR.name)
_loaded(MODEL_ROOT)


def _schema(app: Any) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(max_examples=FUZZ_EXAMPLES, deterministic=True)
    return schema


open_api = _schema(_app(MODEL_ROOT, unknown_products="catalogue"))
keyed_api = _schema(_app(MODEL_ROOT, API_KEY))


@pytest.fixture(scope="module")
def model_root() -> Path:
    """A local store with a published three-SKU model."""
    return MODEL_ROOT


@open_api.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_open_api_holds_against_its_schema(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


@keyed_api.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_keyed_api_holds_against_its_schema(case: Any) -> None:
    case.call_and_validate(
        checks=REJECTING_CHECKS + [st_checks.ignored_auth], headers={"X-API-Key": API_KEY}
    )


# --- Hypothesis on the request validation, through the app ------------------------------------

@pytest.fixture(scope="module")
def client(model_root: Path) -> Iterator[TestClient]:
    """A test client on the open app (lifespan run)."""
    with TestClient(_app(model_root)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def model(model_root: Path) -> LoadedModel:
    """The model the app serves."""
    return load_latest(open_store(str(model_root)))


CODES = ["SKU001", "SKU002", "SKU003"]
valid_orders = st.one_of(
    st.integers(min_value=0, max_value=int(ORDERS_PLACED_MAX)),
    st.floats(min_value=0.0, max_value=ORDERS_PLACED_MAX, allow_nan=False),
)
valid_rows = st.fixed_dictionaries({"product_code": st.sampled_from(CODES),
                                    "orders_placed": valid_orders})


def _finite_json(text: str) -> Any:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-finite number {token} in a response")
    return json.loads(text, parse_constant=refuse)


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURE_OK)
@given(rows=st.lists(valid_rows, min_size=1, max_size=MAX_BATCH_ROWS))
def test_any_valid_rows_get_finite_non_negative_estimates(
    client: TestClient, model: LoadedModel, rows: List[Dict[str, Any]]
) -> None:
    batch = client.post(BATCH, content=json.dumps(rows))
    assert batch.status_code == 200, batch.text
    answers = _finite_json(batch.text)
    estimates = answers["est_hours_to_dispatch"]
    assert len(estimates) == len(answers["p90_hours_to_dispatch"]) == len(rows)
    for row, estimate, upper, outside in zip(
        rows, estimates, answers["p90_hours_to_dispatch"], answers["extrapolated"]
    ):
        expected = model_answers(model.model, row["product_code"], row["orders_placed"])[0]
        assert math.isfinite(estimate) and estimate >= 0.0
        assert estimate == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert math.isfinite(upper) and upper >= estimate
        assert outside is not (10.0 <= row["orders_placed"] <= 150.0)
    single = client.post(SINGLE, content=json.dumps(rows[0]))
    assert single.status_code == 200, single.text
    assert _finite_json(single.text)["est_hours_to_dispatch"] == pytest.approx(estimates[0])


bad_orders = st.one_of(
    st.floats(max_value=-1e-300),
    st.floats(min_value=ORDERS_PLACED_MAX, exclude_min=True),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.integers(max_value=-1),
    st.integers(min_value=int(ORDERS_PLACED_MAX) + 1),
)
bad_codes = st.one_of(
    st.text(min_size=PRODUCT_CODE_MAX_LENGTH + 1, max_size=PRODUCT_CODE_MAX_LENGTH + 3),
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(st.sampled_from(CODES), max_size=1),
)


@st.composite
def invalid_rows(draw: Any) -> Any:
    """A row with a bad field, a missing field, or something that is not a row at all."""
    kind = draw(st.sampled_from(["orders", "code", "missing", "shape"]))
    row: Dict[str, Any] = {"product_code": draw(st.sampled_from(CODES)),
                           "orders_placed": draw(valid_orders)}
    if kind == "orders":
        row["orders_placed"] = draw(bad_orders)
    elif kind == "code":
        row["product_code"] = draw(bad_codes)
    elif kind == "missing":
        del row[draw(st.sampled_from(sorted(row)))]
    else:
        return draw(st.one_of(st.integers(), st.text(max_size=5), st.none(),
                              st.lists(st.integers(), max_size=2)))
    return row


def _raw_body(value: Any) -> str:
    """JSON text; NaN and infinities as the non-standard tokens clients do send."""
    return json.dumps(value, allow_nan=True)


def _assert_names_a_field(response: Any) -> None:
    assert response.status_code == 422, response.text
    detail = _finite_json(response.text)["detail"]
    assert detail and all(issue["loc"] and issue["msg"] for issue in detail)


@settings(max_examples=120, deadline=None, suppress_health_check=FIXTURE_OK)
@given(row=invalid_rows())
def test_any_invalid_row_is_rejected_naming_the_field(client: TestClient, row: Any) -> None:
    _assert_names_a_field(client.post(SINGLE, content=_raw_body(row)))


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(good=st.lists(valid_rows, max_size=5), bad=invalid_rows(), at=st.integers(0, 5))
def test_one_invalid_row_rejects_the_whole_batch(
    client: TestClient, good: List[Dict[str, Any]], bad: Any, at: int
) -> None:
    rows = good[:at] + [bad] + good[at:]
    response = client.post(BATCH, content=_raw_body(rows))
    _assert_names_a_field(response)


unknown_codes = st.text(max_size=8).filter(lambda c: c not in CODES)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(code=unknown_codes, orders=valid_orders)
def test_an_unknown_code_alone_is_a_422_listing_the_codes(
    client: TestClient, code: str, orders: Any
) -> None:
    row = {"product_code": code, "orders_placed": orders}
    response = client.post(SINGLE, content=_raw_body(row))
    _assert_names_a_field(response)
    issue = _finite_json(response.text)["detail"][0]
    assert (issue["type"], issue["loc"]) == ("literal_error", ["body", "product_code"])
    assert all(known in issue["msg"] for known in CODES)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(good=st.lists(valid_rows, max_size=5), unknown=st.lists(unknown_codes, min_size=1,
       max_size=3), orders=valid_orders, data=st.data())
def test_unknown_codes_in_a_batch_get_nulls_and_the_rest_is_answered(
    client: TestClient, good: List[Dict[str, Any]], unknown: List[str], orders: Any, data: Any
) -> None:
    rows = list(good)
    for code in unknown:
        row = {"product_code": code, "orders_placed": orders}
        rows.insert(data.draw(st.integers(0, len(rows))), row)
    response = client.post(BATCH, content=_raw_body(rows))
    assert response.status_code == 200, response.text
    body = _finite_json(response.text)
    listed = [(u["index"], u["product_code"]) for u in body["unknown_product_codes"]]
    assert listed == [(i, r["product_code"]) for i, r in enumerate(rows)
                      if r["product_code"] not in CODES]
    for i, row in enumerate(rows):
        answers = [body[key][i] for key in ("est_hours_to_dispatch", "p90_hours_to_dispatch",
                                            "extrapolated", "basis")]
        if row["product_code"] in CODES:
            single = _finite_json(client.post(SINGLE, content=_raw_body(row)).text)
            assert answers == [single[key] for key in ("est_hours_to_dispatch",
                               "p90_hours_to_dispatch", "extrapolated", "basis")]
        else:
            assert answers == [None] * 4


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(body=st.binary(max_size=40))
def test_arbitrary_bytes_never_cause_a_server_error(client: TestClient, body: bytes) -> None:
    for path in (SINGLE, BATCH):
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code < 500, response.text
        if response.status_code != 200:
            assert response.status_code in (400, 413, 422)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_numbers_are_rejected(client: TestClient, token: str) -> None:
    body = '{"product_code": "SKU001", "orders_placed": %s}' % token
    _assert_names_a_field(client.post(SINGLE, content=body))


def test_batch_over_the_cap_is_a_clear_4xx(client: TestClient) -> None:
    rows = [{"product_code": "SKU001", "orders_placed": 1}] * (MAX_BATCH_ROWS + 1)
    response = client.post(BATCH, content=json.dumps(rows))
    assert 400 <= response.status_code < 500
    assert str(MAX_BATCH_ROWS) in response.text
    at_cap = client.post(BATCH, content=json.dumps(rows[:MAX_BATCH_ROWS]))
    assert at_cap.status_code == 200
