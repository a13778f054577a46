"""Hostile input to the model (issue 5, item 1): property-based tests with Hypothesis.

Any finite, valid order count gives a finite, non-negative estimate, the same from the
service's one-answer path (``Lookup.estimate``) and the model's ``predict`` (batches), never
decreasing as orders grow; any bytes offered as an artefact are either a valid model or
refused with ModelFormatError, never another exception.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline.model_format import Curve, DispatchModel, ModelFormatError
from pipeline.training.estimator import fit_model
from tests.oracles import answers, served

# The largest order count the fuzzing offers: far beyond any real week's trade.
MAX_ORDERS = 1e9

finite_orders = st.floats(min_value=0.0, max_value=MAX_ORDERS, allow_nan=False)
codes = st.text(min_size=1, max_size=12)


@st.composite
def curves(draw: Any) -> Curve:
    """A valid curve: strictly increasing knots, non-negative non-decreasing values."""
    n = draw(st.integers(min_value=2, max_value=9))
    start = draw(st.floats(min_value=-1e6, max_value=1e6))
    gaps = draw(st.lists(st.floats(min_value=1e-3, max_value=1e5), min_size=n - 1, max_size=n - 1))
    base = draw(st.floats(min_value=0.0, max_value=1e4))
    rises = draw(st.lists(st.floats(min_value=0.0, max_value=1e4), min_size=n - 1, max_size=n - 1))
    knots = [start]
    values = [base]
    for gap, rise in zip(gaps, rises):
        knots.append(knots[-1] + gap)
        values.append(values[-1] + rise)
    assume(all(b > a for a, b in zip(knots, knots[1:])))
    return Curve(tuple(knots), tuple(values))


models = st.dictionaries(codes, curves(), min_size=1, max_size=4).map(DispatchModel)


@settings(max_examples=200, deadline=None)
@given(model=models, data=st.data())
def test_any_finite_valid_input_gives_a_finite_non_negative_estimate(
    model: DispatchModel, data: st.DataObject
) -> None:
    rows = data.draw(
        st.lists(st.tuples(st.sampled_from(model.product_codes), finite_orders), min_size=1,
                 max_size=20)
    )
    lookup = served(model)
    singles = [lookup.estimate(lookup.index[code], orders) for code, orders in rows]
    batch = model.predict([c for c, _ in rows], [o for _, o in rows])
    assert all(math.isfinite(v) and v >= 0.0 for v in singles)
    assert np.all(np.isfinite(batch)) and np.all(batch >= 0.0)
    np.testing.assert_allclose(batch, singles, rtol=1e-9, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(curve=curves(), a=finite_orders, b=finite_orders)
def test_estimates_never_fall_as_orders_grow(curve: Curve, a: float, b: float) -> None:
    low, high = min(a, b), max(a, b)
    lookup = served(DispatchModel({"SKU": curve}))
    tolerance = 1e-9 * max(1.0, abs(lookup.estimate(0, high)))
    assert lookup.estimate(0, low) <= lookup.estimate(0, high) + tolerance


@settings(max_examples=100, deadline=None)
@given(model=models)
def test_artefact_round_trip_is_exact(model: DispatchModel) -> None:
    again = DispatchModel.from_json(model.to_json())
    assert again.to_json() == model.to_json()
    assert again.product_codes == model.product_codes


def test_an_unknown_code_is_a_key_error_in_both_paths() -> None:
    model = DispatchModel({"SKU001": Curve((0.0, 1.0), (1.0, 2.0))})
    with pytest.raises(KeyError):
        model.predict_bounded(["SKU999"], [1.0])
    with pytest.raises(KeyError):
        model.predict(["SKU001", "SKU999"], [1.0, 1.0])


# Arbitrary JSON, and JSON shaped almost like an artefact, to probe the parser.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12,
)


@st.composite
def near_artefacts(draw: Any) -> Dict[str, Any]:
    """An artefact document with one part replaced by something arbitrary."""
    numbers = st.one_of(st.floats(), st.integers(), st.booleans(), st.none(), st.text(max_size=3))
    spec = {
        "knots": draw(st.lists(numbers, max_size=5)),
        "values": draw(st.lists(numbers, max_size=5)),
    }
    if draw(st.booleans()):
        spec["p90"] = draw(st.one_of(
            st.fixed_dictionaries({"knots": st.lists(numbers, max_size=5),
                                   "values": st.lists(numbers, max_size=5)}),
            st.just({"knots": [0.0, 1e3], "values": [0.0, 1e9]}),
            json_values,
        ))
        spec["orders_placed_range"] = draw(st.one_of(st.lists(numbers, max_size=3), json_values))
    document: Dict[str, Any] = {
        "format": "time-to-dispatch/monotone-piecewise-linear",
        "format_version": draw(st.sampled_from([1, 1, 1, 2, 2, 2, "1", None])),
        "curves": draw(st.sampled_from([{"SKU": spec}, {}, [spec], {"SKU": draw(json_values)}])),
    }
    return document


def _parse_or_refuse(data: bytes) -> None:
    try:
        model = DispatchModel.from_json(data)
    except ModelFormatError:
        return
    for code in model.product_codes:
        curve = model.curves[code]
        assert len(curve.knots) == len(curve.values) >= 2
        assert all(math.isfinite(v) for v in curve.knots + curve.values)
        assert all(b > a for a, b in zip(curve.knots, curve.knots[1:]))
        assert curve.values[0] >= 0 and all(b >= a for a, b in zip(curve.values, curve.values[1:]))
        for orders in (0.0, curve.knots[0], curve.knots[-1], MAX_ORDERS):
            value, upper, extrapolated = answers(model, code, orders)
            assert math.isfinite(value) and value >= 0.0
            assert upper is None or upper >= value
            assert extrapolated in (None, True, False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_are_a_valid_model_or_refused(data: bytes) -> None:
    _parse_or_refuse(data)


@settings(max_examples=300, deadline=None)
@given(document=near_artefacts())
def test_almost_valid_artefacts_are_refused_or_sound(document: Dict[str, Any]) -> None:
    _parse_or_refuse(json.dumps(document).encode())


def test_a_pickle_is_refused_as_an_artefact(tmp_path: Any) -> None:
    import pickle

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    with pytest.raises(ModelFormatError):
        DispatchModel.from_json(payload)
    assert not marker.exists()


class _Payload:
    """An object whose unpickling would create a marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Tuple[Any, Tuple[str, str]]:
        return (open, (self.path, "w"))


training_rows = st.lists(
    st.tuples(
        st.sampled_from(["A", "B"]),
        st.integers(min_value=0, max_value=10_000),
        st.floats(min_value=0.0, max_value=999.0, allow_nan=False),
    ),
    min_size=4,
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=training_rows, probes=st.lists(finite_orders, min_size=1, max_size=8))
def test_any_finite_training_data_gives_a_sound_model(
    rows: List[Tuple[str, int, float]], probes: List[float]
) -> None:
    codes_, orders, hours = zip(*rows)
    fitted = fit_model(
        list(codes_), np.asarray(orders, dtype=np.float64), np.asarray(hours, dtype=np.float64),
        min_rows_per_code=2, folds=2,
    )
    model = DispatchModel.from_json(fitted.model.to_json())
    lookup = served(model)
    for code in model.product_codes:
        values = [lookup.estimate(lookup.index[code], o) for o in sorted(probes)]
        assert all(math.isfinite(v) and v >= 0.0 for v in values)
        assert all(b >= a - 1e-9 * max(1.0, abs(a)) for a, b in zip(values, values[1:]))
        batch = model.predict([code] * len(probes), sorted(probes))
        np.testing.assert_allclose(batch, values, rtol=1e-9, atol=1e-9)
