"""The model: fitting, shape guarantees, accuracy against the noise floor, the JSON artefact."""
from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np
import pytest

from pipeline.api.lookup import Lookup, prepare
from pipeline.model_format import Curve, DispatchModel, ModelFormatError
from pipeline.simulate import noise_floor_mae, simulate_tranche
from pipeline.training.estimator import DEFAULT_FAMILIES, fit_code, fit_model
from tests.oracles import answers, at

ACCURACY_MARGIN = 1.03


def _fit(rows: int, seed: int, shape: str) -> DispatchModel:
    tranche = simulate_tranche(rows, seed=seed, shape=shape)
    return fit_model(
        tranche.product_code, tranche.orders_placed.astype(float), tranche.hours_to_dispatch
    ).model


@pytest.mark.parametrize("shape", ["linear", "saturating"])
def test_held_out_mae_is_within_three_percent_of_the_noise_floor(shape: str) -> None:
    model = _fit(1000, seed=7, shape=shape)
    fresh = simulate_tranche(20_000, seed=1007, shape=shape)
    predicted = model.predict(fresh.product_code, fresh.orders_placed)
    mae = float(np.mean(np.abs(predicted - fresh.hours_to_dispatch)))
    assert mae <= ACCURACY_MARGIN * noise_floor_mae(fresh)


@pytest.mark.parametrize("shape", ["linear", "saturating"])
def test_predictions_never_fall_and_are_never_negative(shape: str) -> None:
    model = _fit(600, seed=3, shape=shape)
    grid = np.linspace(0.0, 2_000.0, 4001)
    for code in model.product_codes:
        predicted = model.predict([code] * len(grid), grid)
        assert np.all(np.diff(predicted) >= 0.0)
        assert np.all(predicted >= 0.0)


def test_decreasing_data_gives_a_flat_not_a_falling_curve() -> None:
    orders = np.arange(100, dtype=float)
    curve, _, fit, _ = fit_code(orders, 50.0 - 0.3 * orders)
    predicted = curve.predict(np.linspace(0.0, 200.0, 50))
    assert np.all(np.diff(predicted) >= 0.0)
    assert np.all(predicted >= 0.0)
    assert fit.family in DEFAULT_FAMILIES


def test_a_straight_line_is_recovered_and_chosen_as_linear() -> None:
    # Noise-free: several families fit exactly, their CV errors differ only by rounding,
    # and such a tie goes to the simplest family on any CPU.
    orders = np.tile(np.arange(0.0, 200.0), 3)
    curve, _, fit, _ = fit_code(orders, 2.0 + 0.05 * orders)
    assert fit.cv_mae["linear"] < 1e-9
    assert fit.family == "linear"
    assert at(curve, 100.0) == pytest.approx(7.0, abs=1e-6)
    assert at(curve, 400.0) == pytest.approx(22.0, abs=1e-6)


def test_a_saturating_curve_is_chosen_over_the_line() -> None:
    rng = np.random.default_rng(0)
    orders = rng.uniform(0.0, 300.0, 2000)
    hours = 1.0 + 6.0 * (1.0 - np.exp(-orders / 50.0)) + rng.normal(0.0, 0.2, 2000)
    _, _, fit, _ = fit_code(orders, hours)
    assert fit.family != "linear"
    assert fit.cv_mae[fit.family] < fit.cv_mae["linear"]


def test_a_single_order_count_gives_a_constant_curve() -> None:
    curve, _, _, _ = fit_code(np.full(40, 12.0), np.linspace(1.0, 3.0, 40))
    assert at(curve, 0.0) == pytest.approx(2.0)
    assert at(curve, 500.0) == pytest.approx(2.0)


def test_fitting_is_deterministic() -> None:
    assert _fit(500, seed=5, shape="saturating").to_json() == _fit(
        500, seed=5, shape="saturating"
    ).to_json()


def test_rare_codes_are_skipped_at_the_threshold_and_learned_above_it() -> None:
    codes = ["A"] * 29 + ["B"] * 30 + ["C"] * 200
    orders = np.arange(len(codes), dtype=float) % 50
    result = fit_model(codes, orders, 1.0 + 0.1 * orders, min_rows_per_code=30)
    assert result.skipped == {"A": 29}
    assert result.model.product_codes == ("B", "C")
    assert result.fits["B"].rows == 30


def test_the_services_single_answers_equal_the_models_predictions() -> None:
    model = _fit(500, seed=11, shape="saturating")
    rng = np.random.default_rng(1)
    codes = rng.choice(list(model.product_codes), 300)
    orders = rng.uniform(0.0, 500.0, 300)
    vector = model.predict(codes, orders)
    lookup = Lookup(prepare(model.to_json(), b'{"model_sha256": "s"}', "s"))
    single = [lookup.estimate(lookup.index[str(c)], float(o)) for c, o in zip(codes, orders)]
    assert vector.tolist() == single


def test_unknown_code_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        _fit(300, seed=1, shape="linear").predict(["SKU999"], [10.0])


def test_json_round_trip_is_exact_and_canonical() -> None:
    model = _fit(400, seed=2, shape="linear")
    data = model.to_json()
    again = DispatchModel.from_json(data)
    assert again.to_json() == data
    assert again.curves == model.curves


def _document(**curve: Any) -> bytes:
    spec: Dict[str, Any] = {"knots": [0.0, 10.0], "values": [1.0, 2.0]}
    spec.update(curve)
    doc = {
        "format": "time-to-dispatch/monotone-piecewise-linear",
        "format_version": 1,
        "curves": {"SKU001": spec},
    }
    return json.dumps(doc).encode()


def test_a_valid_minimal_document_parses() -> None:
    model = DispatchModel.from_json(_document())
    assert answers(model, "SKU001", 5.0) == (pytest.approx(1.5), None, None)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x04\x95pickle", "not JSON"),
        (b"[]", "not of format"),
        (_document(knots=[0.0]), "needs >= 2 knots"),
        (_document(values=[1.0, 2.0, 3.0]), "needs >= 2 knots"),
        (_document(knots=[0.0, "x"]), "not a number"),
        (_document(values=[1.0, True]), "not a number"),
        (_document(knots=[0.0, 1e999]), "not finite"),
        (_document(knots=[5.0, 5.0]), "strictly increasing"),
        (_document(values=[2.0, 1.0]), "decreasing"),
        (_document(values=[-0.5, 1.0]), "negative"),
        (_document(knots=None), "lacks knots"),
    ],
)
def test_malformed_artefacts_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        DispatchModel.from_json(data)


def test_other_format_versions_are_refused() -> None:
    doc = json.loads(_document())
    doc["format_version"] = 4
    with pytest.raises(ModelFormatError, match="version"):
        DispatchModel.from_json(json.dumps(doc).encode())


def test_curve_extrapolates_along_its_end_segments_and_floors_at_zero() -> None:
    curve = Curve((10.0, 20.0), (1.0, 3.0))
    assert at(curve, 30.0) == pytest.approx(5.0)
    assert at(curve, 5.0) == pytest.approx(0.0)
    assert at(curve, 0.0) == 0.0


def test_a_line_that_levels_off_at_a_capacity_is_recovered() -> None:
    rng = np.random.default_rng(4)
    orders = rng.uniform(0.0, 300.0, 3000)
    truth = np.minimum(2.0 + 0.05 * orders, 9.0)
    curve, _, fit, _ = fit_code(orders, truth + rng.normal(0.0, 0.3, 3000))
    assert fit.family == "capped"
    grid = np.linspace(0.0, 300.0, 61)
    assert np.max(np.abs(curve.predict(grid) - np.minimum(2.0 + 0.05 * grid, 9.0))) < 0.15
