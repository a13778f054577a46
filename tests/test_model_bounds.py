"""Artefact format 2: the p90 bound and the trained range per code; format 1 still loads."""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.model_format import (
    FORMAT,
    Curve,
    DispatchModel,
    ModelFormatError,
    bound_violation,
    trained_ranges,
    upper_bound_curve,
    with_bounds,
)
from testing_support.models import v1_artefact, with_test_bounds
from tests.oracles import answers, at

ESTIMATE = Curve((0.0, 100.0, 200.0), (1.0, 3.0, 4.0))
BOUND = Curve((0.0, 50.0, 200.0), (2.0, 4.0, 6.0))
PROBES = [0.0, 0.5, 10.0, 50.0, 99.9, 100.0, 150.0, 200.0, 200.5, 1e3, 1e6, 1e9]


def bounded_model() -> DispatchModel:
    """Two codes with bounds and ranges."""
    return DispatchModel(
        {"SKU001": ESTIMATE, "SKU002": Curve((10.0, 20.0), (0.0, 5.0))},
        {"SKU001": BOUND, "SKU002": Curve((10.0, 20.0), (1.0, 7.0))},
        {"SKU001": (3.0, 180.0), "SKU002": (10.0, 20.0)},
    )


def document(**changes: Any) -> Dict[str, Any]:
    """A valid format 2 document for SKU001, with some of its curve's keys changed."""
    spec: Dict[str, Any] = {
        "knots": [0.0, 100.0, 200.0],
        "values": [1.0, 3.0, 4.0],
        "p90": {"knots": [0.0, 50.0, 200.0], "values": [2.0, 4.0, 6.0]},
        "orders_placed_range": [3.0, 180.0],
    }
    spec.update(changes)
    return {"format": FORMAT, "format_version": 2, "curves": {"SKU001": spec}}


def parse(doc: Dict[str, Any]) -> DispatchModel:
    """Load a document as the service does."""
    return DispatchModel.from_json(json.dumps(doc).encode())


def test_format_2_round_trip_is_exact_and_canonical() -> None:
    model = bounded_model()
    data = model.to_json()
    assert json.loads(data)["format_version"] == 2
    again = DispatchModel.from_json(data)
    assert again == model
    assert again.to_json() == data


def test_a_format_1_artefact_still_loads_without_bound_or_range() -> None:
    model = DispatchModel.from_json(v1_artefact(bounded_model()))
    assert model.curves == bounded_model().curves
    assert model.bounds == {} and model.ranges == {}
    assert answers(model, "SKU001", 150.0) == (at(ESTIMATE, 150.0), None, None)


def test_format_1_ignores_bound_keys_it_never_had() -> None:
    doc = document()
    doc["format_version"] = 1
    assert parse(doc).bounds == {}


def test_a_format_2_artefact_without_bounds_loads() -> None:
    doc = document(p90=None, orders_placed_range=None)
    model = parse(doc)
    assert model.bounds == {} and model.ranges == {}


def test_upper_bound_is_never_below_the_estimate_and_never_decreases() -> None:
    model = bounded_model()
    for code in model.product_codes:
        estimates = [answers(model, code, x)[0] for x in PROBES]
        uppers = [answers(model, code, x)[1] for x in PROBES]
        assert all(u is not None and math.isfinite(u) for u in uppers)
        assert all(u >= e for u, e in zip(uppers, estimates))  # type: ignore[operator]
        assert uppers == sorted(uppers)  # type: ignore[type-var]


@pytest.mark.parametrize(
    "orders, expected",
    [(0.0, True), (2.999, True), (3.0, False), (100.0, False), (180.0, False),
     (180.001, True), (1e9, True)],
)
def test_extrapolated_is_outside_the_trained_range_both_ends_inclusive(
    orders: float, expected: bool
) -> None:
    assert answers(bounded_model(), "SKU001", orders)[2] is expected


def test_unknown_codes_are_a_key_error_for_every_answer() -> None:
    model = bounded_model()
    for codes in (["SKU999"], ["SKU001", "SKU999"]):
        with pytest.raises(KeyError):
            model.predict_bounded(codes, [1.0] * len(codes))
        with pytest.raises(KeyError):
            model.predict(codes, [1.0] * len(codes))


def test_batch_answers_equal_the_row_answers() -> None:
    model = bounded_model()
    codes = ["SKU002", "SKU001"] * len(PROBES)
    orders = [x for x in PROBES for _ in (0, 1)]
    estimate, upper, outside = model.predict_bounded(codes, orders)
    assert upper is not None and outside is not None
    rows = [answers(model, c, x) for c, x in zip(codes, orders)]
    assert estimate.tolist() == [row[0] for row in rows]
    assert upper.tolist() == [row[1] for row in rows]
    assert outside.tolist() == [row[2] for row in rows]
    plain = DispatchModel(model.curves)
    assert plain.predict_bounded(codes, orders)[1:] == (None, None)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"p90": {"knots": [0.0, 200.0], "values": [1.0, 4.5]}}, "below the estimate at"),
        ({"p90": {"knots": [0.0, 200.0], "values": [0.5, 9.0]}}, "below the estimate at"),
        ({"p90": {"knots": [0.0, 200.0], "values": [5.0, 5.0]}}, "grows slower"),
        ({"p90": {"knots": [0.0, 200.0], "values": [6.0, 5.0]}}, "decreasing"),
        ({"p90": {"knots": [0.0, 1e999], "values": [6.0, 9.0]}}, "not finite"),
        ({"p90": {"knots": [0.0], "values": [6.0]}}, "needs >= 2 knots"),
        ({"p90": [1, 2]}, "not an object"),
        ({"orders_placed_range": [5.0, 1.0]}, "0 <= min <= max"),
        ({"orders_placed_range": [-1.0, 1.0]}, "0 <= min <= max"),
        ({"orders_placed_range": [0.0, 1e999]}, "0 <= min <= max"),
        ({"orders_placed_range": [0.0, 1] + [2]}, r"not \[min, max\]"),
        ({"orders_placed_range": [0.0, True]}, r"not \[min, max\]"),
        ({"orders_placed_range": "0-10"}, r"not \[min, max\]"),
        ({"orders_placed_range": [0, 10**400]}, r"0 <= min <= max: \[0.0, inf\]"),
    ],
)
def test_a_bad_bound_or_range_is_refused_on_load(changes: Dict[str, Any], message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        parse(document(**changes))


def test_bounds_and_ranges_cover_every_code_or_none() -> None:
    doc = document()
    doc["curves"]["SKU002"] = {"knots": [0.0, 1.0], "values": [1.0, 2.0]}
    with pytest.raises(ModelFormatError, match="every product code or none"):
        parse(doc)
    with pytest.raises(ModelFormatError, match="every product code or none"):
        DispatchModel({"A": ESTIMATE}, {}, {"A": (0.0, 1.0), "B": (0.0, 1.0)})


def test_other_format_versions_are_refused() -> None:
    for version in (0, 4, "2", 2.0, None, True):
        doc = document()
        doc["format_version"] = version
        with pytest.raises(ModelFormatError, match="format version"):
            parse(doc)


def test_with_bounds_gives_the_format_2_model_and_refuses_a_low_bound() -> None:
    plain = DispatchModel({"SKU001": ESTIMATE})
    model = with_bounds(plain, {"SKU001": BOUND}, {"SKU001": (3, 180)})
    assert model.bounds == {"SKU001": BOUND} and model.ranges == {"SKU001": (3.0, 180.0)}
    assert DispatchModel.from_json(model.to_json()) == model
    with pytest.raises(ModelFormatError, match="below the estimate"):
        with_bounds(plain, {"SKU001": Curve((0.0, 1.0), (0.0, 0.0))}, {"SKU001": (0.0, 1.0)})


def test_trained_ranges_are_each_codes_smallest_and_largest_orders() -> None:
    codes = ["B", "A", "B", "A", "C"]
    assert trained_ranges(codes, [5, 2, 9, 7, 0]) == {
        "B": (5.0, 9.0), "A": (2.0, 7.0), "C": (0.0, 0.0)
    }


def test_upper_bound_curve_refuses_what_gives_no_finite_bound() -> None:
    with pytest.raises(ValueError, match="finite"):
        upper_bound_curve(ESTIMATE, [0.0, 1.0], [1.0, float("nan")])
    with pytest.raises(ValueError, match="distinct"):
        upper_bound_curve(ESTIMATE, [1.0, 1.0], [1.0, 2.0])
    steep = Curve((0.0, 1e-308), (0.0, 3.0))
    with pytest.raises(ValueError, match="finite"):
        upper_bound_curve(steep, [0.0, 2.0], [0.0, 0.0])


def test_upper_bound_curve_keeps_a_valid_raw_bound() -> None:
    curve = upper_bound_curve(ESTIMATE, BOUND.knots, BOUND.values)
    assert bound_violation(ESTIMATE, curve) is None
    for x in PROBES:
        assert at(curve, x) == pytest.approx(at(BOUND, x))


def test_test_bounds_helper_gives_valid_format_2_models() -> None:
    model = with_test_bounds(DispatchModel({"SKU001": ESTIMATE}))
    assert model.ranges == {"SKU001": (0.0, 200.0)}
    assert DispatchModel.from_json(model.to_json()) == model


def _values(draw: Any, n: int) -> List[float]:
    steps = draw(st.lists(st.floats(0.0, 50.0), min_size=n, max_size=n))
    return [float(v) for v in np.cumsum(steps)]


@st.composite
def raw_bounds(draw: Any) -> Any:
    """An estimate curve and arbitrary finite raw bound values (possibly low or falling)."""
    n = draw(st.integers(2, 6))
    knots = sorted(set(draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))))
    knots = [k / 100.0 for k in knots]
    if len(knots) < 2:
        knots = [0.0, 1.0]
    estimate = Curve(tuple(knots), tuple(_values(draw, len(knots))))
    m = draw(st.integers(2, 6))
    at = sorted(set(draw(st.lists(st.integers(0, 2 * 10**6), min_size=m, max_size=m))))
    at = [k / 100.0 for k in at]
    if len(at) < 2:
        at = [0.0, 2.0]
    raw = draw(st.lists(st.floats(-100.0, 500.0), min_size=len(at), max_size=len(at)))
    return estimate, at, raw


@settings(max_examples=200, deadline=None)
@given(case=raw_bounds())
def test_upper_bound_curve_makes_any_raw_values_a_valid_bound(case: Any) -> None:
    estimate, knots, raw = case
    curve = upper_bound_curve(estimate, knots, raw)
    assert bound_violation(estimate, curve) is None
    model = with_bounds(DispatchModel({"X": estimate}), {"X": curve}, {"X": (0.0, 1.0)})
    again = DispatchModel.from_json(model.to_json())
    probes = sorted(set([0.0, 1e9] + list(estimate.knots) + list(curve.knots) + list(knots)))
    uppers = [answers(again, "X", x)[1] for x in probes]
    assert all(u is not None and u >= at(estimate, x) for u, x in zip(uppers, probes))
    assert uppers == sorted(uppers)  # type: ignore[type-var]
