"""The p90 bound: split-conformal on out-of-fold residuals, scaled by a spread that grows."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pytest

from pipeline.model_format import Curve, bound_violation
from pipeline.simulate import simulate_tranche
from pipeline.training.bound import conformal_bound, conformal_quantile, coverage
from pipeline.training.estimator import DispatchTimeRegressor, features, fit_code

FloatArray = np.ndarray


def queue_rows(n: int, seed: int, growing: bool) -> Tuple[FloatArray, FloatArray]:
    """One product code's rows: a straight truth with a constant or queue-grown spread."""
    rng = np.random.default_rng(seed)
    orders = rng.poisson(100 * rng.uniform(0.1, 2.5, n)).astype(np.float64)
    spread = 0.5 * (0.2 + orders / 100.0) if growing else 0.5
    return orders, 2.0 + 0.03 * orders + rng.normal(0.0, 1.0, n) * spread


def test_the_conformal_quantile_is_the_finite_sample_rank_and_never_negative() -> None:
    assert conformal_quantile(np.arange(1.0, 10.0), 0.9) == 9.0
    assert conformal_quantile(np.arange(1.0, 20.0), 0.9) == 18.0
    assert conformal_quantile(np.arange(1.0, 101.0)[::-1], 0.9) == 91.0
    assert conformal_quantile(-np.arange(1.0, 20.0), 0.9) == 0.0


@pytest.mark.parametrize("growing", [False, True])
def test_the_bound_covers_about_90_percent_at_the_quiet_and_the_busy_end(growing: bool) -> None:
    orders, hours = queue_rows(3000, seed=1, growing=growing)
    curve, bound, fit, _ = fit_code(orders, hours)
    fresh_orders, fresh_hours = queue_rows(20_000, seed=2, growing=growing)
    assert 0.87 < coverage(bound, fresh_orders, fresh_hours) < 0.93
    for low, high in ((0.0, 100.0), (150.0, np.inf)):
        inside = (fresh_orders >= low) & (fresh_orders < high)
        assert coverage(bound, fresh_orders[inside], fresh_hours[inside]) > 0.85
    assert fit.bound_quantile > 0


def test_a_constant_margin_would_fail_where_the_spread_grows() -> None:
    orders, hours = queue_rows(3000, seed=1, growing=True)
    curve, _, _, _ = fit_code(orders, hours)
    flat = conformal_bound(curve, orders, hours, curve.predict(orders), 0.9)
    margin = float(np.quantile(hours - curve.predict(orders), 0.9))
    constant = Curve(curve.knots, tuple(v + margin for v in curve.values))
    fresh_orders, fresh_hours = queue_rows(20_000, seed=2, growing=True)
    busy = fresh_orders >= 150
    assert coverage(constant, fresh_orders[busy], fresh_hours[busy]) < 0.85
    assert coverage(flat.curve, fresh_orders[busy], fresh_hours[busy]) > 0.85


def test_the_bound_is_a_valid_upper_curve_on_any_rows() -> None:
    rng = np.random.default_rng(5)
    for case in range(20):
        n = int(rng.integers(30, 300))
        orders = rng.integers(0, int(rng.integers(1, 400)), n).astype(np.float64)
        hours = np.abs(rng.standard_cauchy(n)) * float(rng.uniform(0.01, 50))
        curve, bound, _, _ = fit_code(orders, hours)
        assert bound_violation(curve, bound) is None, case
        grid = np.linspace(0.0, 3 * orders.max() + 10, 500)
        upper = bound.predict(grid)
        assert np.isfinite(upper).all() and np.all(np.diff(upper) >= 0)
        assert np.all(upper >= curve.predict(grid) - 1e-9 * (1 + np.abs(upper)))


def test_noise_free_rows_get_a_bound_hugging_the_estimate() -> None:
    orders = np.tile(np.arange(0.0, 200.0), 3)
    curve, bound, _, _ = fit_code(orders, 2.0 + 0.05 * orders)
    grid = np.linspace(0.0, 400.0, 101)
    assert np.allclose(bound.predict(grid), curve.predict(grid), atol=1e-3)


def test_the_estimator_exports_bounds_and_trained_ranges() -> None:
    tranche = simulate_tranche(1000, seed=4, noise="queue")
    X = features(tranche.product_code, tranche.orders_placed)
    regressor = DispatchTimeRegressor().fit(X, tranche.hours_to_dispatch)
    upper = regressor.predict_upper(X)
    assert np.all(upper >= regressor.predict(X))
    model = regressor.to_dispatch_model()
    assert set(model.bounds) == set(model.ranges) == set(regressor.curves_)
    for code, (low, high) in model.ranges.items():
        mine = tranche.orders_placed[tranche.product_code == code]
        assert (low, high) == (mine.min(), mine.max())
    with pytest.raises(ValueError, match="bound_level"):
        DispatchTimeRegressor(bound_level=1.0).fit(X, tranche.hours_to_dispatch)
