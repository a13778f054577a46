"""The prediction routes' parser agrees with pydantic; the served model's batch equals single."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.api.lookup import summarise, summarise_metadata
from pipeline.api.predictions import Predictions, RequestRejected
from pipeline.api.serving import BatchRows, ServingModel, build_serving_model
from pipeline.artefacts import load_latest
from tests.api_support import CODES, new_store

CAP = 20
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> ServingModel:
    """A ServingModel of a five-part model."""
    store = new_store(tmp_path_factory.mktemp("serving"))
    return build_serving_model(load_latest(store))


@pytest.fixture(scope="module")
def parser() -> Predictions:
    """The prediction routes' parser with a small batch cap."""
    return Predictions(CAP)


values = st.one_of(
    st.sampled_from(CODES),
    st.text(max_size=8),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=0, max_value=2e9),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
good_rows = st.fixed_dictionaries(
    {"product_code": st.sampled_from(CODES),
     "orders_placed": st.one_of(st.integers(0, 10**9), st.floats(0, 1e9))}
)
any_rows = st.one_of(
    good_rows,
    st.fixed_dictionaries({"product_code": values, "orders_placed": values}),
    st.dictionaries(st.sampled_from(["product_code", "orders_placed", "x"]), values, max_size=3),
    values,
)
bodies = st.one_of(
    st.lists(good_rows, max_size=CAP + 2),
    st.lists(any_rows, max_size=CAP + 2),
    any_rows,
).map(lambda data: json.dumps(data).encode())


def reference(parser: Predictions, body: bytes) -> Optional[BatchRows]:
    """What pydantic alone makes of a body: the columns, or None when it is invalid."""
    try:
        checked = parser.validators.batch.validate_json(body)
    except ValidationError:
        return None
    return BatchRows(
        [r["product_code"] for r in checked],
        np.array([r["orders_placed"] for r in checked], dtype=np.float64),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE_OK)
@given(body=bodies)
def test_batch_parser_agrees_with_pydantic(parser: Predictions, body: bytes) -> None:
    expected = reference(parser, body)
    if expected is None:
        with pytest.raises(RequestRejected):
            parser.parse_batch(body)
        return
    got = parser.parse_batch(body)
    assert got.product_codes == expected.product_codes
    assert np.array_equal(got.orders_placed, expected.orders_placed)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE_OK)
@given(body=any_rows.map(lambda data: json.dumps(data).encode()))
def test_single_parser_agrees_with_pydantic(
    parser: Predictions, serving: ServingModel, body: bytes
) -> None:
    try:
        row = parser.validators.single.validate_json(body)
    except ValidationError as exc:
        with pytest.raises(RequestRejected) as raised:
            parser.parse_single(body, serving)
        found = raised.value.errors
        if found[0]["type"] == "literal_error":  # a valid string the model does not know
            assert found[0]["loc"] == ("product_code",) and found[0]["input"] not in CODES
            found = found[1:]
        assert found == exc.errors(include_url=False)
        return
    assert parser.parse_single(body, serving) == (row["product_code"], row["orders_placed"])


@pytest.mark.parametrize(
    "body",
    [b'{"product_code": "SKU001", "orders_placed": 1, "orders_placed": -1}',
     b'{"product_code": "SKU001", "orders_placed": -1, "orders_placed": 1}',
     b'{"product_code": "SKU001", "orders_placed": 18446744073709551616}',
     b'{"product_code": "SKU001", "orders_placed": 1e999}',
     b'{"product_code": "SKU001", "orders_placed": 1000000000}',
     b'{"product_code": "SKU001", "orders_placed": 1000000000.0000001}',
     b'{"product_code": "SKU001", "orders_placed": -0.0}'],
)
def test_single_parser_edge_cases(parser: Predictions, serving: ServingModel, body: bytes) -> None:
    try:
        row = parser.validators.single.validate_json(body)
    except ValidationError:
        with pytest.raises(RequestRejected):
            parser.parse_single(body, serving)
        return
    assert parser.parse_single(body, serving) == (row["product_code"], row["orders_placed"])


@pytest.mark.parametrize(
    "body",
    [b"[]", b'[{"product_code": "SKU001", "orders_placed": 1e999}]',
     b'[{"product_code": "SKU001", "orders_placed": NaN}]',
     b'[{"product_code": "SKU001", "orders_placed": 18446744073709551616}]',
     b'[{"product_code": "SKU001", "orders_placed": -0.0}]'],
)
def test_batch_parser_edge_numbers(parser: Predictions, body: bytes) -> None:
    expected = reference(parser, body)
    if expected is None:
        with pytest.raises(RequestRejected):
            parser.parse_batch(body)
    else:
        assert parser.parse_batch(body).product_codes == expected.product_codes


@pytest.mark.parametrize("n, ok", [(CAP, True), (CAP + 1, False)])
def test_batch_cap_boundary(parser: Predictions, n: int, ok: bool) -> None:
    body = json.dumps([{"product_code": "SKU001", "orders_placed": 1}] * n).encode()
    if ok:
        assert len(parser.parse_batch(body).product_codes) == n
    else:
        with pytest.raises(RequestRejected) as raised:
            parser.parse_batch(body)
        assert f"at most {CAP} items" in raised.value.errors[0]["msg"]


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(CODES), st.floats(min_value=0, max_value=1e9)), max_size=60
    )
)
def test_batch_estimates_equal_single_estimates(serving: ServingModel, pairs: List[Any]) -> None:
    codes = [c for c, _ in pairs]
    orders = np.array([o for _, o in pairs], dtype=np.float64)
    batch = serving.predict_batch(BatchRows(codes, orders)).estimates.tolist()
    single = [serving.predict_one(c, float(o)) for c, o in pairs]
    assert batch == single
    assert all(math.isfinite(v) and v >= 0 for v in batch)


def test_model_facts_from_metadata(tmp_path: Path) -> None:
    loaded = load_latest(new_store(tmp_path))
    serving = build_serving_model(loaded)
    assert serving.trained_at is not None and serving.trained_at.year == 2026
    assert serving.product_codes == CODES
    assert serving.metadata.model_version == serving.version
    assert serving.summary["model_version"] == serving.version


def test_summarise_makes_metadata_strict_json_and_small() -> None:
    raw = {"a": [1.5, float("nan"), float("inf")], "b": {"c": 2**70, "d": True, "e": -(2**63)}}
    assert summarise(raw) == {
        "a": [1.5, None, None], "b": {"c": str(2**70), "d": True, "e": str(-(2**63))}
    }
    big = {"per_product_code": {f"P{i}": {"mae": 1.0} for i in range(1000)}, "rows": 7}
    assert summarise(big) == {"per_product_code": "<object with 1000 keys>", "rows": 7}
    wide = [[list(range(60)) for _ in range(60)]]
    assert len(json.dumps(summarise(wide))) < 20_000


def test_metadata_summary_keeps_what_the_api_reads_and_fits_its_budget() -> None:
    metadata = {
        "notes": {f"k{i}": "x" * 5000 for i in range(60)},
        "metrics": {"held_out": {"overall": {"mae": 0.4},
                                 "per_product_code": {f"P{i}": {} for i in range(1000)}}},
        "model_sha256": "abc",
    }
    summary = summarise_metadata(metadata)
    assert len(json.dumps(summary)) <= 32_768
    assert summary["metrics"]["held_out"]["overall"] == {"mae": 0.4}
    assert summary["metrics"]["held_out"]["per_product_code"] == "<object with 1000 keys>"
    assert list(summary) == list(metadata)
