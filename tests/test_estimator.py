"""The estimator follows scikit-learn's conventions; ties in CV error never hinge on rounding."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import r2_score
from sklearn.model_selection import cross_val_score

from pipeline.simulate import simulate_tranche
from pipeline.training import estimator as estimator_module
from pipeline.training.estimator import (
    DEFAULT_FAMILIES, CurveFamilies, DispatchTimeRegressor, MonotoneCurveRegressor, features,
    fit_code, simplest_within_tolerance,
)
from tests.oracles import at


def _data(
    rows: int = 600, seed: int = 3, shape: str = "saturating"
) -> Tuple[pd.DataFrame, np.ndarray]:
    tranche = simulate_tranche(rows, seed=seed, shape=shape)
    return features(tranche.product_code, tranche.orders_placed), tranche.hours_to_dispatch


def test_clone_and_params_round_trip() -> None:
    regressor = DispatchTimeRegressor(folds=3, min_rows_per_code=10, random_state=7, n_jobs=2,
                                      dask_scheduler="tcp://127.0.0.1:8786")
    params = regressor.get_params()
    assert params["folds"] == 3 and params["random_state"] == 7 and params["n_jobs"] == 2
    assert params["dask_scheduler"] == "tcp://127.0.0.1:8786"
    copy = clone(regressor)
    assert copy is not regressor and copy.get_params() == params
    copy.set_params(folds=4, families=("linear", "pieces-2"))
    assert copy.get_params()["folds"] == 4 and regressor.get_params()["folds"] == 3
    assert clone(MonotoneCurveRegressor("log")).get_params() == {"family": "log",
                                                                 "loss": "squared"}
    assert clone(CurveFamilies(("linear",))).get_params() == {"families": ("linear",),
                                                              "loss": "squared"}


def test_curve_families_predict_one_column_per_family_as_each_family_alone() -> None:
    rng = np.random.default_rng(2)
    orders = rng.integers(0, 300, 300).astype(float)[:, None]
    hours = 1.0 + 0.02 * orders[:, 0] + rng.normal(0.0, 0.3, 300)
    together = CurveFamilies(DEFAULT_FAMILIES).fit(orders, hours).predict(orders)
    assert together.shape == (300, len(DEFAULT_FAMILIES))
    for i, family in enumerate(DEFAULT_FAMILIES):
        alone = MonotoneCurveRegressor(family).fit(orders, hours).predict(orders)
        # The folds' predictions come from each family's exact shape, a published curve is that
        # shape at its knots and linear in between: equal to interpolation error.
        np.testing.assert_allclose(together[:, i], alone, rtol=1e-3)


def test_fitted_state_ends_in_an_underscore_and_is_absent_before_fit() -> None:
    regressor = DispatchTimeRegressor()
    X, y = _data()
    with pytest.raises(NotFittedError):
        regressor.predict(X)
    with pytest.raises(NotFittedError):
        regressor.to_dispatch_model()
    assert not [name for name in vars(regressor) if name.endswith("_")]
    regressor.fit(X, y)
    assert {"curves_", "fits_", "skipped_", "n_features_in_"} <= set(vars(regressor))
    assert sorted(regressor.curves_) == sorted(set(X["product_code"]))


def test_score_is_r2_and_predict_matches_the_exported_model() -> None:
    X, y = _data()
    regressor = DispatchTimeRegressor().fit(X, y)
    predicted = regressor.predict(X)
    assert regressor.score(X, y) == pytest.approx(r2_score(y, predicted), abs=1e-12)
    exported = regressor.to_dispatch_model().predict(
        X["product_code"].astype(str).tolist(), X["orders_placed"]
    )
    np.testing.assert_allclose(predicted, exported, rtol=0, atol=1e-12)


def test_it_works_inside_cross_val_score() -> None:
    X, y = _data(800)
    scores = cross_val_score(DispatchTimeRegressor(folds=3), X, y, cv=3, scoring="r2")
    assert len(scores) == 3 and np.all(scores > 0.8)


def test_unknown_codes_are_a_key_error_and_rare_codes_are_skipped() -> None:
    codes = ["A"] * 29 + ["B"] * 40
    orders = np.arange(len(codes), dtype=float)
    regressor = DispatchTimeRegressor(min_rows_per_code=30).fit(features(codes, orders), orders)
    assert regressor.skipped_ == {"A": 29} and list(regressor.curves_) == ["B"]
    with pytest.raises(KeyError):
        regressor.predict(features(["A"], [1.0]))


def test_string_and_categorical_codes_and_parallel_fits_give_the_same_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tranche = simulate_tranche(400, seed=9)
    y = tranche.hours_to_dispatch
    as_text = pd.DataFrame({"product_code": tranche.product_code.astype(object),
                            "orders_placed": tranche.orders_placed})
    one = DispatchTimeRegressor().fit(as_text, y).to_dispatch_model().to_json()
    assert DispatchTimeRegressor().fit(as_text, y).to_dispatch_model().to_json() == one
    monkeypatch.setattr(estimator_module, "CODES_PER_WORKER", 1)
    X = features(tranche.product_code, tranche.orders_placed)
    assert DispatchTimeRegressor(n_jobs=2).fit(X, y).to_dispatch_model().to_json() == one


def test_bad_input_is_refused_with_a_clear_error() -> None:
    X, y = _data(100)
    with pytest.raises(ValueError, match="3 feature.*expecting 2 features"):
        DispatchTimeRegressor().fit(np.zeros((40, 3)), np.zeros(40))
    with pytest.raises(ValueError, match="columns 'product_code' and 'orders_placed'"):
        DispatchTimeRegressor().fit(X.rename(columns={"orders_placed": "orders"}), y)
    with pytest.raises(ValueError, match="rows"):
        DispatchTimeRegressor().fit(X, y[:-1])
    with pytest.raises(ValueError, match="without a product_code"):
        DispatchTimeRegressor().fit(X.assign(product_code=None), y)
    with pytest.raises(ValueError, match=">= 0"):
        DispatchTimeRegressor().fit(X, -y)
    with pytest.raises(ValueError, match="requires y"):
        DispatchTimeRegressor().fit(X, None)
    with pytest.raises(ValueError, match="min_rows_per_code"):
        DispatchTimeRegressor(folds=5, min_rows_per_code=3).fit(X, y)
    with pytest.raises(ValueError, match="each named once"):
        DispatchTimeRegressor(families=("linear", "linear")).fit(X, y)


def test_an_array_of_the_two_columns_fits_the_same_model_as_the_frame() -> None:
    X, y = _data(300)
    table = np.column_stack([X["product_code"].astype(str), X["orders_placed"]]).astype(object)
    from_frame = DispatchTimeRegressor().fit(X, y)
    from_array = DispatchTimeRegressor().fit(table, y)
    assert from_array.to_dispatch_model().to_json() == from_frame.to_dispatch_model().to_json()
    np.testing.assert_array_equal(from_array.predict(table), from_frame.predict(X))


def test_heavy_tailed_rows_get_a_median_fit_that_beats_least_squares() -> None:
    rng = np.random.default_rng(8)

    def draw(rows: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        orders = rng.integers(0, 250, rows).astype(float)
        median = 20.0 + 0.1 * orders
        tail = np.where(rng.random(rows) < 0.1, rng.pareto(1.2, rows) * 40.0, 0.0)
        return orders, median * np.exp(rng.normal(0.0, 0.4, rows)) + tail, median

    orders, hours, _ = draw(400)
    curve, _, fit, _ = fit_code(orders, hours)
    assert fit.loss == "absolute" or fit.family == "flat"
    mean_fit = MonotoneCurveRegressor(fit.family if fit.family != "flat" else "linear").fit(
        orders[:, None], hours)
    fresh, later, median = draw(20_000)
    robust = np.mean(np.abs(later - curve.predict(fresh)))
    least_squares = np.mean(np.abs(later - mean_fit.predict(fresh[:, None])))
    assert robust < 0.97 * least_squares
    assert robust < 1.03 * np.mean(np.abs(later - median))


def test_a_curve_stays_flat_where_orders_placed_carries_no_signal() -> None:
    rng = np.random.default_rng(4)
    orders = rng.integers(0, 250, 300).astype(float)
    hours = 40.0 * np.exp(rng.normal(0.0, 0.8, 300))
    curve, _, fit, _ = fit_code(orders, hours)
    assert fit.family == "flat" and fit.loss == "absolute"
    assert at(curve, 0.0) == at(curve, 250.0) == pytest.approx(np.median(hours))


def test_scores_within_rounding_noise_tie_and_go_to_the_simpler_family() -> None:
    rng = np.random.default_rng(0)
    exact = np.full(len(DEFAULT_FAMILIES), 1e-15)
    for _ in range(1000):
        noisy = exact + rng.uniform(-1e-12, 1e-12, len(exact))
        assert simplest_within_tolerance(list(noisy), 0.01, 1e-9) == 0
    # Real differences still decide: 2% better is chosen, 0.5% better is a tie.
    assert simplest_within_tolerance([1.0, 0.98], 0.01, 1e-9) == 1
    assert simplest_within_tolerance([1.0, 0.995], 0.01, 1e-9) == 0


@pytest.mark.parametrize("seed", range(5))
def test_a_noise_free_line_perturbed_at_1e_12_is_still_linear(seed: int) -> None:
    rng = np.random.default_rng(seed)
    orders = np.tile(np.arange(0.0, 200.0), 3)
    hours = 2.0 + 0.05 * orders + rng.uniform(-1e-12, 1e-12, len(orders))
    _, _, fit, _ = fit_code(orders, hours, random_state=seed)
    assert fit.family == "linear"


def test_large_codes_choose_on_a_sample_and_fit_on_every_row() -> None:
    rng = np.random.default_rng(5)
    orders = rng.integers(0, 300, 5000).astype(float)
    hours = 1.0 + 6.0 * (1.0 - np.exp(-orders / 50.0)) + rng.normal(0.0, 0.2, 5000)
    curve, _, fit, _ = fit_code(orders, hours, cv_max_rows=500)
    assert fit.rows == 5000 and fit.family != "linear"
    assert fit.orders_range == (float(orders.min()), float(orders.max()))
    again, _, _, _ = fit_code(orders, hours, cv_max_rows=500)
    assert again == curve
