"""Partial pooling: every part seen gets a curve, shrunk toward the catalogue the fewer its rows."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from pipeline.model_format import DispatchModel, bound_violation
from pipeline.simulate import SimulatedTranche, catalogue_world
from pipeline.training.pooling import TRANCHE, PooledDispatchRegressor, bucket_names, rows_bucket


def frame(codes: List[str], orders: np.ndarray, tranche: np.ndarray) -> pd.DataFrame:
    """The pooled estimator's input."""
    return pd.DataFrame({"product_code": pd.Categorical(codes),
                         "orders_placed": np.asarray(orders, dtype=float), TRANCHE: tranche})


def catalogue_rows(parts: int = 150, rows: int = 3000, weeks: int = 4, seed: int = 3
                   ) -> Tuple[pd.DataFrame, np.ndarray, SimulatedTranche, object]:
    """A simulated catalogue's weeks as one input (tranche 0 newest) and a fresh newest draw."""
    world = catalogue_world(parts, rows, weeks, seed)
    weekly = [world.tranche(w) for w in reversed(range(weeks))]
    X = frame(list(np.concatenate([t.product_code for t in weekly])),
              np.concatenate([t.orders_placed for t in weekly]),
              np.concatenate([np.full(rows, i) for i in range(weeks)]))
    y = np.concatenate([t.hours_to_dispatch for t in weekly])
    return X, y, world.tranche(weeks - 1, draw=1), world


@pytest.fixture(scope="module")
def fitted() -> Tuple[PooledDispatchRegressor, pd.DataFrame, np.ndarray, SimulatedTranche, object]:
    X, y, fresh, world = catalogue_rows()
    return PooledDispatchRegressor(n_jobs=1).fit(X, y), X, y, fresh, world


def test_follows_scikit_learn_conventions(fitted) -> None:
    regressor, X, y, _, _ = fitted
    fresh = PooledDispatchRegressor(min_rows_per_code=40, catalogue_knots=8)
    assert clone(fresh).get_params() == fresh.get_params()
    with pytest.raises(NotFittedError):
        fresh.predict(X)
    assert {"product_", "catalogue_", "curves_", "bounds_", "bases_", "summary_"} <= set(
        vars(regressor))
    assert not any(k.endswith("_") for k in vars(fresh))
    with pytest.raises(ValueError, match="newest tranche"):
        PooledDispatchRegressor().fit(X.assign(**{TRANCHE: X[TRANCHE] + 1}), y)


def test_every_part_seen_gets_a_monotone_non_negative_bounded_curve(fitted) -> None:
    regressor, X, _, _, _ = fitted
    model: DispatchModel = regressor.to_dispatch_model()
    assert set(model.curves) == set(X["product_code"].astype(str))
    newest = X[X[TRANCHE] == 0]["product_code"].astype(str).value_counts()
    for code, curve in model.curves.items():
        expected = "product" if newest.get(code, 0) >= 30 else "pooled"
        assert model.bases[code] == expected
        values = np.asarray(curve.values)
        assert values[0] >= 0 and np.all(np.diff(values) >= 0)
        assert bound_violation(curve, model.bounds[code]) is None
        if expected == "pooled":
            assert len(curve.knots) <= 10
    assert {"product", "pooled"} == set(model.bases.values())
    assert model.catalogue is not None
    assert bound_violation(model.catalogue.curve, model.catalogue.bound) is None
    again = DispatchModel.from_json(model.to_json())
    assert again.to_json() == model.to_json()


def test_the_fit_is_deterministic(fitted) -> None:
    regressor, X, y, _, _ = fitted
    again = PooledDispatchRegressor(n_jobs=1).fit(X, y)
    assert again.to_dispatch_model().to_json() == regressor.to_dispatch_model().to_json()
    assert again.summary_ == regressor.summary_


def test_the_warehouse_wide_level_of_each_week_is_recovered(fitted) -> None:
    regressor, _, _, _, world = fitted
    truth = (world.week_factor / world.week_factor[-1])[::-1]
    levels = np.asarray(regressor.summary_.tranche_levels)
    assert levels[0] == 1.0
    assert np.max(np.abs(levels / truth - 1.0)) < 0.03


def test_held_out_coverage_holds_for_both_bases(fitted) -> None:
    regressor, X, _, fresh, _ = fitted
    model = regressor.to_dispatch_model()
    known = np.isin(fresh.product_code, list(model.curves))
    assert known.mean() > 0.99
    codes = list(fresh.product_code[known])
    _, upper, _ = model.predict_bounded(codes, fresh.orders_placed[known])
    assert upper is not None
    basis = np.asarray([model.bases[c] for c in codes])
    covered = fresh.hours_to_dispatch[known] <= upper
    for name in ("product", "pooled"):
        assert (basis == name).sum() > 500
        assert 0.86 <= covered[basis == name].mean() <= 0.94, name
    widths = regressor.summary_.bucket_quantiles
    assert widths["0"] >= widths["1"] > widths["33+"]


def test_a_part_with_3_rows_lands_near_the_catalogue_one_with_300_near_its_own_fit() -> None:
    rng = np.random.default_rng(5)
    codes: List[str] = []
    orders: List[np.ndarray] = []
    tranche: List[np.ndarray] = []
    factors: List[float] = []

    def add(code: str, rows: int, week: int, factor: float) -> None:
        codes.extend([code] * rows)
        orders.append(rng.integers(10, 250, size=rows))
        tranche.append(np.full(rows, week))
        factors.extend([factor] * rows)

    for i in range(200):
        factor = float(np.exp(rng.normal(0.0, 0.03)))
        add(f"T{i:03d}", 20, 0, factor)
        add(f"T{i:03d}", 5, 1, factor)
    for i in range(3):
        add(f"TOP{i}", 120, 0, 1.0)
    add("FEW", 3, 0, 1.3)
    add("MANY", 300, 1, 1.3)  # none in the newest tranche: an older week's rows only
    x = np.concatenate(orders).astype(float)
    truth = np.asarray(factors) * (2.0 + 0.02 * x)
    y = np.maximum(truth + rng.normal(0.0, 1.0, size=len(x)), 0.0)
    regressor = PooledDispatchRegressor(n_jobs=1).fit(frame(codes, x, np.concatenate(tranche)), y)
    assert regressor.summary_.shrinkage_rows > 10
    catalogue = regressor.catalogue_.curve.predict(np.array([100.0]))[0]
    few = regressor.curves_["FEW"].predict(np.array([100.0]))[0]
    many = regressor.curves_["MANY"].predict(np.array([100.0]))[0]
    assert regressor.bases_["FEW"] == regressor.bases_["MANY"] == "pooled"
    assert abs(few / catalogue - 1.0) < 0.1
    assert abs(many / catalogue - 1.3) < 0.05


def shifted_catalogue(offsets: str) -> Tuple[PooledDispatchRegressor, np.ndarray]:
    """Parts differing by a factor and a shift; SHIFTED's 300 rows are all in an older week."""
    rng = np.random.default_rng(11)
    codes: List[str] = []
    orders: List[np.ndarray] = []
    tranche: List[np.ndarray] = []
    truth: List[np.ndarray] = []

    def add(code: str, rows: int, week: int, factor: float, shift: float) -> None:
        x = rng.integers(10, 250, size=rows).astype(float)
        codes.extend([code] * rows)
        orders.append(x)
        tranche.append(np.full(rows, week))
        truth.append(factor * (2.0 + 0.02 * x) + shift)

    for i in range(200):
        factor, shift = float(np.exp(rng.normal(0.0, 0.1))), float(rng.normal(0.0, 0.5))
        add(f"T{i:03d}", 20, 0, factor, shift)
        add(f"T{i:03d}", 5, 1, factor, shift)
    for i in range(3):
        add(f"TOP{i}", 120, 0, 1.0, 0.0)
    add("SHIFTED", 300, 1, 1.0, 1.5)
    x = np.concatenate(orders)
    y = np.maximum(np.concatenate(truth) + rng.normal(0.0, 1.0, size=len(x)), 0.0)
    regressor = PooledDispatchRegressor(n_jobs=1, offsets=offsets)
    return regressor.fit(frame(codes, x, np.concatenate(tranche)), y), np.array([50.0, 200.0])


def test_a_part_shifted_from_the_catalogue_with_many_older_rows_lands_near_its_truth() -> None:
    regressor, x = shifted_catalogue("factor+shift")
    assert regressor.bases_["SHIFTED"] == "pooled"
    truth = 2.0 + 0.02 * x + 1.5
    shifted = regressor.curves_["SHIFTED"].predict(x)
    assert np.max(np.abs(shifted / truth - 1.0)) < 0.04
    assert abs(regressor.shifts_["SHIFTED"] - 1.5) < 0.3
    factor_only, _ = shifted_catalogue("factor")
    assert np.max(np.abs(factor_only.curves_["SHIFTED"].predict(x) / truth - 1.0)) > 0.06


def test_the_offset_model_is_checked() -> None:
    X, y, _, _ = catalogue_rows(parts=20, rows=300, weeks=1)
    with pytest.raises(ValueError, match="offsets must be one of"):
        PooledDispatchRegressor(offsets="shift").fit(X, y)


def test_rows_buckets_are_named_and_ordered() -> None:
    assert bucket_names()[:4] == ["0", "1", "2", "3-4"] and bucket_names()[-1] == "33+"
    assert rows_bucket(np.array([0.0, 1.0, 2.0, 4.0, 5.0, 40.0])).tolist() == [0, 1, 2, 3, 4, 7]
