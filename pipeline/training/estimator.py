"""The model as a scikit-learn estimator: one monotone, non-negative curve per product code.

Training only (the service loads the exported JSON knots with ``pipeline.model_format`` and
needs neither scikit-learn nor pandas).

Orders are judged by absolute error, so a curve estimates the conditional median of the hours.
Per product code, ``cross_val_predict`` (``KFold``) predicts every row with every candidate
family at once through ``CurveFamilies`` (least squares, cheap); their MAE picks the family: a
straight line, four one-parameter curved shapes (saturating exponential, log, power, and a
line capped at a level) or piecewise-linear ramps with 2, 4 or 8 pieces. The same folds then
score three answers: the code's median (a flat curve: ``orders_placed`` carries no signal), the
chosen family by least squares, and the chosen family by least absolute deviations
(``MonotoneCurveRegressor(loss="absolute")``: iteratively reweighted least squares on the same
machinery); the simplest whose CV MAE is within 1% of the lowest, or within floating-point
noise of it (1e-9 of the labels' scale), wins: least squares where the noise is even (it is the
more efficient), the median fit where a heavy tail would drag a mean. Every family has all
coefficients >= 0 (bounded-variable least squares, or a closed form for the curved shapes,
whose parameter is profiled on a grid inside ``fit``), so no curve falls as orders grow and
none starts below 0. Codes with more rows than ``cv_max_rows`` choose on a seeded sample of
that many rows and fit the chosen curve on all of them. Codes are fitted in parallel through
joblib (``n_jobs``), or as tasks on an existing Dask cluster (``dask_scheduler``, see
``pipeline.training.cluster``) with the same result.

The same out-of-fold predictions of the chosen curve calibrate each code's upper bound
(``pipeline.training.bound``: split-conformal, scaled by a spread that grows with the queue),
so the bound costs no extra fit.

:class:`DispatchRegressorBase` holds what both of the project's regressors share: their common
parameters, the checks of their input (a DataFrame with ``product_code`` and
``orders_placed``, or the same two columns as an array), ``predict`` and ``predict_upper``
from the fitted curves, and the export; :class:`DispatchTimeRegressor` is the per-code model,
``pipeline.training.pooling.PooledDispatchRegressor`` the one with partial pooling.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import (
    Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple,
)

import numpy as np
import numpy.typing as npt
import pandas as pd
from joblib import Parallel, delayed, effective_n_jobs
from scipy.optimize import lsq_linear
from sklearn import config_context
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.utils import resample
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from pipeline.model_format import BOUND_QUANTILE, Curve, DispatchModel, rows_by_code, with_bounds
from pipeline.training.bound import conformal_bound, label_scale

CODE = "product_code"
ORDERS = "orders_placed"
TRANCHE = "tranche"
FLAT = "flat"
SQUARED = "squared"
ABSOLUTE = "absolute"
LOSSES = (SQUARED, ABSOLUTE)
DEFAULT_FAMILIES: Tuple[str, ...] = (
    "linear", "saturating", "log", "power", "capped", "pieces-2", "pieces-4", "pieces-8"
)
DEFAULT_FOLDS = 5
DEFAULT_MIN_ROWS_PER_CODE = 30
DEFAULT_CV_MAX_ROWS = 20_000
SIMPLER_TOLERANCE = 0.01
ROUNDING_TOLERANCE = 1e-9
# Least absolute deviations by reweighted least squares: at most this many rounds, stopping
# once a round lowers the mean absolute deviation by less than ABSOLUTE_CONVERGED of it (even
# noise converges in a few rounds, a heavy tail in a few dozen); and the smallest residual a
# weight is computed from, as a share of the mean absolute residual (a curve through a row
# would otherwise give it an infinite weight).
ABSOLUTE_ROUNDS = 30
ABSOLUTE_CONVERGED = 1e-4
ABSOLUTE_FLOOR = 1e-3
CODES_PER_WORKER = 50
# How many rows of recent per-code fits are remembered (see FitMemory).
FIT_MEMORY_ROWS = 4_000_000
# Codes per Dask task: enough to amortise a task's overhead, few enough to rerun cheaply.
CODES_PER_TASK = 25
CURVE_GRID_POINTS = 129
QUANTILE_GRID = np.linspace(0.0, 1.0, 33)
CURVED_PARAMETERS: Dict[str, npt.NDArray[np.float64]] = {
    "saturating": np.geomspace(0.02, 5.0, 96),
    "log": np.geomspace(0.01, 5.0, 96),
    "power": np.linspace(0.05, 0.95, 37),
    "capped": np.linspace(0.02, 0.98, 49),
}

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class CodeFit:
    """How one product code was fitted: rows, the curve chosen and every candidate's CV MAE.

    ``family`` is ``"flat"`` (the code's median) or one of the families, fitted with ``loss``
    (``"squared"``: least squares; ``"absolute"``: least absolute deviations).
    """

    rows: int
    family: str
    parameter: float
    cv_mae: Dict[str, float]
    orders_range: Tuple[float, float] = (0.0, 0.0)
    bound_quantile: float = 0.0
    loss: str = SQUARED


class FittedCode(NamedTuple):
    """One product code's estimate curve, its upper bound and how it was chosen; ``scores``:
    its rows' out-of-fold errors in units of the bound's margin (rows of the CV sample)."""

    curve: Curve
    bound: Curve
    fit: CodeFit
    scores: FloatArray = np.zeros(0)


@dataclass(frozen=True)
class FitResult:
    """A fitted model, the choice made per code, the codes too rare to learn, and (for a
    pooled fit) what the pooling learned."""

    model: DispatchModel
    fits: Dict[str, CodeFit]
    skipped: Dict[str, int] = field(default_factory=dict)
    pooling: Optional[Dict[str, Any]] = None


def _quantiles(values: FloatArray, counts: FloatArray, levels: FloatArray) -> FloatArray:
    """Quantiles of sorted distinct values repeated ``counts`` times (as np.quantile)."""
    cumulative = np.cumsum(counts)
    positions = levels * (cumulative[-1] - 1.0)
    below = values[np.searchsorted(cumulative, np.floor(positions), side="right")]
    above = values[np.searchsorted(cumulative, np.ceil(positions), side="right")]
    result: FloatArray = below + (above - below) * (positions - np.floor(positions))
    return result


def _raw_shape(kind: str, x: FloatArray, scale: FloatArray) -> FloatArray:
    """An increasing transform of order counts, one column per shape parameter."""
    if kind == "saturating":
        result: FloatArray = -np.exp(-x / scale)
    elif kind == "log":
        result = np.log1p(x / scale)
    elif kind == "capped":
        result = np.minimum(x, scale)
    else:
        result = x ** scale
    return result


def _shapes(
    kind: str, x: FloatArray, low: float, high: float, only: Optional[int] = None
) -> FloatArray:
    """Increasing shapes of one kind, a column per parameter, 0 at ``low`` and 1 at ``high``."""
    grid = CURVED_PARAMETERS[kind]
    parameters = (grid if only is None else grid[only:only + 1])[None, :]
    if kind == "power":
        scale = parameters
    elif kind == "capped":
        scale = low + parameters * (high - low)
    else:
        scale = parameters * (high - low)
    bottom = _raw_shape(kind, np.array([[low]]), scale)
    top = _raw_shape(kind, np.array([[high]]), scale)
    with np.errstate(all="ignore"):
        shaped: FloatArray = (_raw_shape(kind, np.maximum(x, 0.0)[:, None], scale) - bottom) / (
            top - bottom
        )
    return shaped


class Aggregated(NamedTuple):
    """Rows grouped by order count: the distinct counts, their weighted mean hours, their
    summed weights and their row counts (which place knots, whatever the weights)."""

    orders: FloatArray
    means: FloatArray
    weights: FloatArray
    counts: FloatArray


class Solved(NamedTuple):
    """A family solved on aggregated rows: its values at their order counts, its values at any
    order counts (``predict``: what a cross-validation fold needs), and how to build the
    published curve (only the final fit needs it)."""

    at_orders: FloatArray
    predict: Callable[[FloatArray], FloatArray]
    build: Callable[[], Tuple[Curve, float]]


def _fit_curved(rows: Aggregated, kind: str,
                shapes: Optional[Tuple[FloatArray, FloatArray]] = None) -> Solved:
    """Best a + b * shape(x) with a, b >= 0 over the kind's whole parameter grid in closed form.

    Weighted least squares of two coefficients has a closed form, so every parameter on the
    grid is solved at once from a few sums: a profile no library offers, and the reason a
    grid search over the shape parameter costs no more than one fit. ``shapes`` (the grid's
    shapes at the rows' order counts, and their squares) may be given when the same counts are
    fitted again.
    """
    orders, hours, weights = rows.orders, rows.means, rows.weights
    low, high = float(orders[0]), float(orders[-1])
    g, squares = _curved_design(rows, kind) if shapes is None else shapes
    n = float(weights.sum())
    sy, syy = float(weights @ hours), float(weights @ (hours * hours))
    sg, sgg, sgy = weights @ g, weights @ squares, (weights * hours) @ g
    with np.errstate(all="ignore"):
        b = (sgy - sg * sy / n) / (sgg - sg * sg / n)
        a = (sy - b * sg) / n
        through_zero = np.maximum(sgy / sgg, 0.0)
    options = [
        (np.where((a >= 0) & (b >= 0), a, np.nan), np.where((a >= 0) & (b >= 0), b, np.nan)),
        (np.full_like(sg, max(sy / n, 0.0)), np.zeros_like(sg)),
        (np.zeros_like(sg), through_zero),
    ]
    best = (np.inf, 0.0, 0.0, 0)
    for oa, ob in options:
        with np.errstate(all="ignore"):
            sse = syy - 2 * oa * sy - 2 * ob * sgy + n * oa * oa + 2 * oa * ob * sg + ob * ob * sgg
        sse = np.where(np.isfinite(sse), sse, np.inf)
        i = int(np.argmin(sse))
        if sse[i] < best[0]:
            best = (float(sse[i]), float(oa[i]), float(ob[i]), i)
    _, a0, b0, i = best

    def build() -> Tuple[Curve, float]:
        span = high - low
        grid = np.unique(
            np.concatenate(
                (
                    np.linspace(0.0, high + span, CURVE_GRID_POINTS),
                    low + span * np.geomspace(1e-4, 1.0, CURVE_GRID_POINTS // 2),
                    _quantiles(orders, rows.counts, QUANTILE_GRID),
                )
            )
        )
        with np.errstate(all="ignore"):
            values = a0 + b0 * _shapes(kind, grid, low, high, only=i)[:, 0]
        values = np.maximum.accumulate(np.maximum(values, 0.0))
        curve = Curve(tuple(float(k) for k in grid), tuple(float(v) for v in values))
        return curve, float(CURVED_PARAMETERS[kind][i])

    def predict(x: FloatArray) -> FloatArray:
        with np.errstate(all="ignore"):
            result: FloatArray = np.maximum(a0 + b0 * _shapes(kind, x, low, high, only=i)[:, 0],
                                            0.0)
        return result

    with np.errstate(all="ignore"):
        at_orders = a0 + b0 * g[:, i]
    return Solved(at_orders, predict, build)


def _curved_design(rows: Aggregated, kind: str) -> Tuple[FloatArray, FloatArray]:
    """The shapes of a curved kind at the rows' order counts, a column per parameter, squared."""
    g = _shapes(kind, rows.orders, float(rows.orders[0]), float(rows.orders[-1]))
    return g, g * g


def _ramps(rows: Aggregated, segments: int) -> Tuple[FloatArray, FloatArray]:
    """Knots at quantiles of the rows' order counts, and the design of a level plus ramps."""
    orders = rows.orders
    knots: FloatArray = np.unique(
        _quantiles(orders, rows.counts, np.linspace(0.0, 1.0, segments + 1)))
    design = np.empty((len(orders), len(knots)), dtype=np.float64)
    design[:, 0] = 1.0
    design[:, 1:] = np.clip(
        (orders[:, None] - knots[None, :-1]) / np.diff(knots)[None, :], 0.0, 1.0
    )
    return knots, design


def _fit_pieces(rows: Aggregated, segments: int,
                ramps: Optional[Tuple[FloatArray, FloatArray]] = None) -> Solved:
    """A level plus ramps between quantile knots, every coefficient >= 0: it never falls."""
    knots, design = _ramps(rows, segments) if ramps is None else ramps
    root = np.sqrt(rows.weights)
    # Bounded-variable least squares: scipy 1.13's nnls (the newest for Python 3.9) fails on
    # collinear ramps ("Matrix is singular", "Maximum number of iterations reached").
    solved = lsq_linear(design * root[:, None], rows.means * root, bounds=(0.0, np.inf),
                        method="bvls")
    steps = np.maximum(solved.x, 0.0)

    def build() -> Tuple[Curve, float]:
        values = np.cumsum(steps)
        return Curve(tuple(float(k) for k in knots), tuple(float(v) for v in values)), 0.0

    return Solved(design @ steps, lambda x: build()[0].predict(x), build)


def _aggregate(orders: FloatArray, hours: FloatArray,
               weights: Optional[FloatArray] = None) -> Aggregated:
    """Rows sharing an order count share a design row: fit their weighted means."""
    distinct, inverse = np.unique(orders, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    if weights is None:
        return Aggregated(distinct, np.bincount(inverse, weights=hours) / counts, counts, counts)
    summed = np.asarray(np.bincount(inverse, weights=weights), dtype=np.float64)
    return Aggregated(distinct, np.bincount(inverse, weights=weights * hours) / summed, summed,
                      counts)


def flat_curve(at: float, level: float) -> Curve:
    """A constant curve (two knots from ``at``), never below 0."""
    level = max(float(level), 0.0)
    return Curve((float(at), float(at) + 1.0), (level, level))


def fit_curve(orders: FloatArray, hours: FloatArray, family: str,
              loss: str = SQUARED) -> Tuple[Curve, float]:
    """Fit one named family (or ``"flat"``) by ``loss``; the curve and its shape parameter."""
    curve, parameter = solve_curve(orders, hours, family, loss).build()
    if not np.isfinite(curve.values).all():
        return _fit_pieces(_aggregate(orders, hours), 1).build()
    return curve, parameter


def solve_curve(orders: FloatArray, hours: FloatArray, family: str,
                loss: str = SQUARED) -> Solved:
    """One named family (or ``"flat"``) solved by ``loss`` on some rows (see Solved)."""
    if family == FLAT:
        centre = np.median(hours) if loss == ABSOLUTE else np.mean(hours)
        flat = flat_curve(float(np.min(orders)), float(centre))
        return Solved(flat.predict(orders), flat.predict, lambda: (flat, 0.0))
    if loss == SQUARED:
        return _solve_family(_aggregate(orders, hours), family)
    if loss != ABSOLUTE:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
    # Least absolute deviations as iteratively reweighted least squares: each round weighs a
    # row by 1 / |its residual|, so the weighted squares approach the absolute deviations.
    # The order counts, and so the family's design, stay the same from round to round.
    distinct, inverse = np.unique(orders, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    weights = np.ones(len(hours))
    design: Dict[str, Any] = {}
    smallest = max(ROUNDING_TOLERANCE * label_scale(hours), float(np.finfo(np.float64).tiny))
    best: Optional[Solved] = None
    last = np.inf
    for _ in range(ABSOLUTE_ROUNDS):
        summed = np.asarray(np.bincount(inverse, weights=weights), dtype=np.float64)
        rows = Aggregated(distinct, np.bincount(inverse, weights=weights * hours) / summed,
                          summed, counts)
        solved = _solve_family(rows, family, design)
        residuals = np.abs(hours - solved.at_orders[inverse])
        deviation = float(np.mean(residuals))
        if best is not None and deviation > last * (1.0 - ABSOLUTE_CONVERGED):
            return solved if deviation <= last else best
        best, last = solved, deviation
        floor = max(ABSOLUTE_FLOOR * deviation, smallest)
        # floor / residual rather than 1 / residual: the same fit, and never an overflow.
        weights = floor / np.maximum(residuals, floor)
    return solved


def _solve_family(rows: Aggregated, family: str,
                  design: Optional[Dict[str, Any]] = None) -> Solved:
    """One family solved on aggregated rows; ``design`` caches what depends only on the
    order counts, for a caller that fits the same counts again with other weights."""
    if len(rows.orders) == 1:
        flat = flat_curve(float(rows.orders[0]), float(rows.means[0]))
        return Solved(np.maximum(rows.means, 0.0), flat.predict, lambda: (flat, 0.0))
    cache: Dict[str, Any] = {} if design is None else design
    kind, _, value = family.partition("-")
    if kind in ("linear", "pieces"):
        segments = 1 if kind == "linear" else int(value)
        if family not in cache:
            cache[family] = _ramps(rows, segments)
        return _fit_pieces(rows, segments, cache[family])
    if kind in CURVED_PARAMETERS:
        if family not in cache:
            cache[family] = _curved_design(rows, kind)
        solved = _fit_curved(rows, kind, cache[family])
        if np.isfinite(solved.at_orders).all():
            return solved
        return _fit_pieces(rows, 1)
    raise ValueError(f"unknown model family {family!r}")


def _fit_family(rows: Aggregated, family: str) -> Tuple[Curve, float]:
    """One family's curve and shape parameter on aggregated rows."""
    curve, parameter = _solve_family(rows, family).build()
    if not np.isfinite(curve.values).all():
        return _fit_pieces(rows, 1).build()
    return curve, parameter


class MonotoneCurveRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """One family's monotone, non-negative curve of hours on one feature (orders placed).

    ``loss="squared"`` fits the conditional mean (least squares), ``"absolute"`` the
    conditional median (least absolute deviations); ``family="flat"`` is a constant.
    """

    def __init__(self, family: str = "linear", loss: str = SQUARED) -> None:
        self.family = family
        self.loss = loss

    def fit(self, X: Any, y: Any) -> "MonotoneCurveRegressor":
        """Fit the family with non-negative coefficients."""
        orders, hours = _one_feature(X), np.asarray(y, dtype=np.float64)
        if hours.shape != orders.shape or not np.isfinite(hours).all():
            raise ValueError("y must be finite numbers, one per row of X")
        self.curve_, self.parameter_ = fit_curve(orders, hours, self.family, self.loss)
        self.n_features_in_ = 1
        return self

    def predict(self, X: Any) -> FloatArray:
        """Estimated hours for each row's order count."""
        check_is_fitted(self)
        return self.curve_.predict(_one_feature(X))


def _one_feature(X: Any) -> FloatArray:
    """The order counts of a one-column X; a light check, as it runs for every CV fold."""
    orders = np.asarray(X, dtype=np.float64)
    if orders.ndim != 2 or orders.shape[1] != 1 or not np.isfinite(orders).all():
        raise ValueError(f"X must be one column of finite order counts, not {orders.shape}")
    column: FloatArray = orders[:, 0]
    return column


class CurveFamilies(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Every candidate family's curve on the same rows, by one loss: a column per family.

    Cross-validating it scores all families on each fold in one pass over the rows (by least
    squares the aggregation by order count is shared), which is what makes choosing a family
    for thousands of product codes affordable. ``"flat"`` is a family too (the mean, or by
    absolute loss the median).
    """

    def __init__(self, families: Sequence[str] = DEFAULT_FAMILIES, loss: str = SQUARED) -> None:
        self.families = families
        self.loss = loss

    def fit(self, X: Any, y: Any) -> "CurveFamilies":
        """Fit every family with non-negative coefficients."""
        orders, hours = _one_feature(X), np.asarray(y, dtype=np.float64)
        if hours.shape != orders.shape or not np.isfinite(hours).all():
            raise ValueError("y must be finite numbers, one per row of X")
        aggregated = _aggregate(orders, hours) if self.loss == SQUARED else None
        self.solved_ = [
            _solve_family(aggregated, family)
            if aggregated is not None and family != FLAT
            else solve_curve(orders, hours, family, self.loss)
            for family in self.families]
        self.n_features_in_ = 1
        return self

    def predict(self, X: Any) -> FloatArray:
        """Each family's estimate (columns in the order of ``families``) for each row.

        From each family's solved shape (a published curve is that shape at knots, linear in
        between: the two agree to interpolation error).
        """
        check_is_fitted(self)
        orders = _one_feature(X)
        return np.column_stack([solved.predict(orders) for solved in self.solved_])


def simplest_within_tolerance(mae: Sequence[float], relative: float, absolute: float) -> int:
    """The first candidate (simplest first) whose CV MAE is within tolerance of the lowest.

    A score within ``relative`` of the lowest, or within ``absolute`` of it (floating-point
    noise), ties, and a tie goes to the simpler candidate.
    """
    scores = np.asarray(mae, dtype=np.float64)
    lowest = float(np.min(scores))
    return int(np.flatnonzero(scores <= lowest + max(relative * lowest, absolute))[0])


def fit_code(
    orders: FloatArray,
    hours: FloatArray,
    families: Sequence[str] = DEFAULT_FAMILIES,
    folds: int = DEFAULT_FOLDS,
    random_state: int = 0,
    cv_max_rows: int = DEFAULT_CV_MAX_ROWS,
    relative_tolerance: float = SIMPLER_TOLERANCE,
    rounding_tolerance: float = ROUNDING_TOLERANCE,
    bound_level: float = BOUND_QUANTILE,
) -> FittedCode:
    """Choose the curve by k-fold CV on MAE (ties to the simpler), fit it on all rows, and
    calibrate its upper bound on the chosen curve's out-of-fold residuals.

    First the family, among least-squares fits; then, on the same folds, the code's median, that
    family by least squares and that family by least absolute deviations.
    """
    cv_orders, cv_hours = orders, hours
    if len(orders) > cv_max_rows:
        cv_orders, cv_hours = resample(
            orders, hours, replace=False, n_samples=cv_max_rows, random_state=random_state
        )
    folds_of = list(KFold(folds, shuffle=True, random_state=random_state).split(cv_orders))
    tolerance = rounding_tolerance * label_scale(cv_hours)
    # The data were checked once by the caller: skip scikit-learn's per-call re-validation,
    # which would cost more than the small fits themselves.
    with config_context(assume_finite=True, skip_parameter_validation=True):
        # Every row predicted by every family from the folds that did not hold it: one fit
        # per fold serves all families.
        out_of_fold = cross_val_predict(
            CurveFamilies(tuple(families)), cv_orders[:, None], cv_hours, cv=folds_of)
        mae = np.mean(np.abs(out_of_fold - cv_hours[:, None]), axis=0).tolist()
        family = families[simplest_within_tolerance(mae, relative_tolerance, tolerance)]
        candidates = [(FLAT, ABSOLUTE), (family, SQUARED), (family, ABSOLUTE)]
        medians = cross_val_predict(CurveFamilies((FLAT, family), ABSOLUTE), cv_orders[:, None],
                                    cv_hours, cv=folds_of)
        predicted = [medians[:, 0], out_of_fold[:, list(families).index(family)], medians[:, 1]]
        scores = [float(np.mean(np.abs(cv_hours - p))) for p in predicted]
        chosen = simplest_within_tolerance(scores, relative_tolerance, tolerance)
        best = MonotoneCurveRegressor(*candidates[chosen]).fit(orders[:, None], hours)
    bound = conformal_bound(best.curve_, cv_orders, cv_hours, predicted[chosen], bound_level)
    cv_mae = {name: score for name, score in zip(families, mae)}
    cv_mae["median"] = scores[0]
    cv_mae[f"{family} ({ABSOLUTE})"] = scores[2]
    fitted = CodeFit(
        rows=int(len(orders)),
        family=str(best.family),
        parameter=float(best.parameter_),
        cv_mae=cv_mae,
        orders_range=(float(orders.min()), float(orders.max())),
        bound_quantile=bound.quantile,
        loss=str(best.loss),
    )
    estimate = best.curve_.predict(cv_orders)
    margin = np.maximum(bound.curve.predict(cv_orders) - estimate,
                        ROUNDING_TOLERANCE * label_scale(cv_hours))
    return FittedCode(best.curve_, bound.curve, fitted, (cv_hours - predicted[chosen]) / margin)


class CodeSettings(NamedTuple):
    """fit_code's settings, the same for every product code of a fit."""

    families: Tuple[str, ...]
    folds: int
    random_state: int
    cv_max_rows: int
    relative_tolerance: float
    rounding_tolerance: float
    bound_level: float


CodeRows = Tuple[FloatArray, FloatArray]


def fit_batch(batch: Tuple[Sequence[CodeRows], CodeSettings]) -> List[FittedCode]:
    """fit_code on each code's orders and hours of a batch: one task of a fit on Dask."""
    codes, settings = batch
    return [fit_code(orders, hours, *settings) for orders, hours in codes]


class FitMemory:
    """The last fits, by a digest of their rows and settings (a fit depends on nothing else).

    A training run fits the same rows more than once: its refit's first calibration origin is
    the scored model's data again. Within :func:`remembered_fits` those fits are looked up here
    instead of repeated; held to ``rows`` rows of fits, the oldest forgotten first, and all
    forgotten when the block ends. Outside it nothing is kept.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.held = 0
        self.fits: "OrderedDict[bytes, FittedCode]" = OrderedDict()

    def reset(self, rows: int) -> None:
        """Forget every fit; from now on hold up to ``rows`` rows of fits (0: none)."""
        self.rows, self.held = rows, 0
        self.fits.clear()

    @staticmethod
    def key(orders: FloatArray, hours: FloatArray, settings: CodeSettings) -> bytes:
        """The digest of one code's rows and the settings."""
        digest = hashlib.sha256(repr(settings).encode())
        digest.update(np.ascontiguousarray(orders, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(hours, dtype=np.float64).tobytes())
        return digest.digest()

    def get(self, key: bytes) -> Optional[FittedCode]:
        """A fit seen before, or None."""
        found = self.fits.get(key)
        if found is not None:
            self.fits.move_to_end(key)
        return found

    def put(self, key: bytes, fitted: FittedCode) -> None:
        """Keep a fit, forgetting the oldest beyond the rows held."""
        if key in self.fits or self.rows <= 0:
            return
        self.fits[key] = fitted
        self.held += fitted.fit.rows
        while self.held > self.rows and len(self.fits) > 1:
            _, old = self.fits.popitem(last=False)
            self.held -= old.fit.rows


FIT_MEMORY = FitMemory()


@contextlib.contextmanager
def remembered_fits(rows: int = FIT_MEMORY_ROWS) -> Iterator[None]:
    """Within this block, per-code fits repeated on the same rows are looked up (FitMemory)."""
    FIT_MEMORY.reset(rows)
    try:
        yield
    finally:
        FIT_MEMORY.reset(0)


def fit_codes(
    codes: Sequence[CodeRows], settings: CodeSettings, n_jobs: Optional[int],
    dask_scheduler: Optional[str] = None,
) -> List[FittedCode]:
    """Every code's fit, in order: in ``n_jobs`` local processes, or on a Dask cluster; a code
    fitted on the same rows with the same settings lately is taken from FIT_MEMORY."""
    keys = [FitMemory.key(orders, hours, settings) for orders, hours in codes]
    known = [FIT_MEMORY.get(key) for key in keys]
    missing = [i for i, found in enumerate(known) if found is None]
    todo = [codes[i] for i in missing]
    fitted: List[FittedCode]
    if dask_scheduler:
        from pipeline.training.cluster import map_on_cluster

        batches = [(todo[start:start + CODES_PER_TASK], settings)
                   for start in range(0, len(todo), CODES_PER_TASK)]
        fitted = [one for batch in map_on_cluster(dask_scheduler, fit_batch, batches)
                  for one in batch] if batches else []
    else:
        # A worker process costs about a second to start (it imports this module): only
        # enough codes per worker pay for it, so small tranches are fitted in this process.
        jobs = min(effective_n_jobs(n_jobs), max(1, len(todo) // CODES_PER_WORKER))
        fitted = Parallel(n_jobs=jobs)(
            delayed(fit_code)(orders, hours, *settings) for orders, hours in todo)
    for i, one in zip(missing, fitted):
        FIT_MEMORY.put(keys[i], one)
        known[i] = one
    return [one for one in known if one is not None]


def features(product_codes: Any, orders_placed: Any) -> pd.DataFrame:
    """The estimator's input: a frame with ``product_code`` and ``orders_placed``."""
    return pd.DataFrame({
        CODE: pd.Series(product_codes, dtype="category")
        if not isinstance(product_codes, pd.Categorical) else product_codes,
        ORDERS: np.asarray(orders_placed, dtype=np.float64),
    })


class Rows(NamedTuple):
    """The estimator's input, checked: distinct codes (sorted), each row's part (its position
    among them), its order count, its tranche (0 = the newest) and, when given, its hours."""

    names: List[str]
    part: IntArray
    orders: FloatArray
    tranche: IntArray
    hours: Optional[FloatArray]


def _code_positions(codes: Any) -> Tuple[List[str], IntArray]:
    """Distinct codes as text, sorted, and each row's position among them."""
    if isinstance(codes, pd.Series) and isinstance(codes.dtype, pd.CategoricalDtype):
        names = [str(c) for c in codes.cat.categories]
        order = np.argsort(names, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        raw = codes.cat.codes.to_numpy()
        if (raw < 0).any():
            raise ValueError(f"X has rows without a {CODE} (NaN, None or inf)")
        return [names[i] for i in order], np.asarray(rank[raw], dtype=np.int64)
    values = np.asarray(codes)
    series = pd.Series(values.astype(object))
    numeric = values.dtype.kind in "fc" and not np.isfinite(values).all()
    if numeric or series.isna().any():
        raise ValueError(f"X has rows without a {CODE} (NaN, None or inf)")
    index, unique = pd.factorize(series.astype(str), sort=True)
    return [str(c) for c in unique], np.asarray(index, dtype=np.int64)


class DispatchRegressorBase(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """What the project's regressors share: parameters, input checks, predictions, export.

    ``X`` is a pandas DataFrame with ``product_code`` and ``orders_placed`` (and, for a
    regressor that reads older tranches, optionally ``tranche``: 0 the newest, 1, 2, ... older
    ones), or an array whose columns are those, in that order. ``y`` is the hours to dispatch,
    finite and >= 0. Subclasses fit ``curves_`` and ``bounds_`` (a curve per code) and export
    them with ``to_dispatch_model``.
    """

    reads_tranches = False

    def __init__(
        self,
        families: Sequence[str] = DEFAULT_FAMILIES,
        folds: int = DEFAULT_FOLDS,
        min_rows_per_code: int = DEFAULT_MIN_ROWS_PER_CODE,
        cv_max_rows: int = DEFAULT_CV_MAX_ROWS,
        relative_tolerance: float = SIMPLER_TOLERANCE,
        rounding_tolerance: float = ROUNDING_TOLERANCE,
        random_state: int = 0,
        n_jobs: Optional[int] = None,
        bound_level: float = BOUND_QUANTILE,
        dask_scheduler: Optional[str] = None,
    ) -> None:
        self.families = families
        self.folds = folds
        self.min_rows_per_code = min_rows_per_code
        self.cv_max_rows = cv_max_rows
        self.relative_tolerance = relative_tolerance
        self.rounding_tolerance = rounding_tolerance
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.bound_level = bound_level
        self.dask_scheduler = dask_scheduler

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True
        tags.input_tags.string = True
        return tags

    def code_settings(self) -> CodeSettings:
        """fit_code's settings from this estimator's parameters, once they are checked."""
        if self.folds < 2 or self.min_rows_per_code < self.folds:
            raise ValueError("need folds >= 2 and min_rows_per_code >= folds")
        if not self.families or len(set(self.families)) != len(self.families):
            raise ValueError("need at least one candidate family, each named once")
        if not 0.0 < self.bound_level < 1.0:
            raise ValueError("bound_level must be between 0 and 1")
        return CodeSettings(
            tuple(self.families), self.folds, self.random_state, self.cv_max_rows,
            self.relative_tolerance, self.rounding_tolerance, self.bound_level,
        )

    def _rows(self, X: Any, y: Any = None, fitting: bool = False) -> Rows:
        """X (and y) checked and taken apart; ValueError names the problem."""
        width = 3 if self.reads_tranches else 2
        if isinstance(X, pd.DataFrame):
            if CODE not in X or ORDERS not in X:
                raise ValueError(
                    f"X must have the columns {CODE!r} and {ORDERS!r}, not {list(X.columns)}")
            codes, orders_in = X[CODE], X[[ORDERS]]
            tranche_in = X[[TRANCHE]] if TRANCHE in X and self.reads_tranches else None
        else:
            table = check_array(X, dtype=None, ensure_2d=True, ensure_all_finite=False,
                                ensure_min_samples=1)
            if not 2 <= table.shape[1] <= width:
                raise ValueError(
                    f"X has {table.shape[1]} feature(s), but {type(self).__name__} is expecting "
                    f"2 features as input: {CODE} and {ORDERS}"
                    + (f" (and {TRANCHE})" if width == 3 else ""))
            codes, orders_in = table[:, 0], table[:, 1:2]
            tranche_in = table[:, 2:3] if table.shape[1] == 3 else None
        orders = check_array(orders_in, dtype=np.float64, ensure_min_samples=1)[:, 0]
        names, index = _code_positions(codes)
        tranche = np.zeros(len(orders), dtype=np.int64)
        if tranche_in is not None:
            tranche = check_array(tranche_in, dtype=np.int64)[:, 0]
            if (tranche < 0).any():
                raise ValueError(f"{TRANCHE} must be >= 0 (0 is the newest tranche)")
        hours = None
        if fitting and y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             f"is None: the hours to dispatch, one per row of X")
        if y is not None:
            hours = column_or_1d(check_array(np.asarray(y), ensure_2d=False, dtype=np.float64),
                                 warn=True)
            if len(hours) != len(orders):
                raise ValueError(f"X has {len(orders)} rows but y has {len(hours)}")
            if (hours < 0).any():
                raise ValueError("y (hours to dispatch) must be >= 0")
        if fitting:
            self.n_features_in_ = 2
            self.feature_names_in_ = np.asarray([CODE, ORDERS], dtype=object)
        return Rows(names, index, orders, tranche, hours)

    def predict(self, X: Any) -> FloatArray:
        """Estimated hours per row (the conditional median); KeyError names the first code
        the model does not know."""
        check_is_fitted(self)
        return self._per_code(X, self.curves_)

    def predict_upper(self, X: Any) -> FloatArray:
        """Each row's upper bound: ``bound_level`` of dispatches take at most this long."""
        check_is_fitted(self)
        return self._per_code(X, self.bounds_)

    def _per_code(self, X: Any, curves: Dict[str, Curve]) -> FloatArray:
        rows = self._rows(X)
        result = np.empty(len(rows.orders), dtype=np.float64)
        for position, members in rows_by_code(rows.part, len(rows.names)):
            result[members] = self._curve_of(curves, rows.names[position]).predict(
                rows.orders[members])
        return result

    def _curve_of(self, curves: Dict[str, Curve], code: str) -> Curve:
        """The curve that answers a code; KeyError for a code the model does not know."""
        return curves[code]

    def to_dispatch_model(self) -> DispatchModel:
        """The published model."""
        raise NotImplementedError

    def fit_result(self) -> FitResult:
        """The exported model with the choice made per code."""
        raise NotImplementedError


class DispatchTimeRegressor(DispatchRegressorBase):
    """Hours to dispatch from ``product_code`` and ``orders_placed``: a curve per code.

    ``fit`` learns one monotone, non-negative curve for every code with at least
    ``min_rows_per_code`` rows (rarer codes are left out and listed in ``skipped_``),
    chosen by ``folds``-fold cross-validated MAE, and an upper bound within which a
    ``bound_level`` share of dispatches fall (``predict_upper``); ``predict`` raises KeyError
    for a code it has not learned; ``to_dispatch_model`` exports the published artefact.
    Codes are fitted in ``n_jobs`` local processes or, given ``dask_scheduler`` (an address
    such as ``tcp://host:8786``), as tasks on that Dask cluster, with the same result.
    """

    def fit(self, X: Any, y: Any) -> "DispatchTimeRegressor":
        """Fit a curve per product code with enough rows, in parallel over codes."""
        settings = self.code_settings()
        rows = self._rows(X, y, fitting=True)
        assert rows.hours is not None
        groups = list(rows_by_code(rows.part, len(rows.names)))
        learned = [(rows.names[p], members) for p, members in groups
                   if len(members) >= self.min_rows_per_code]
        fitted = fit_codes(
            [(rows.orders[members], rows.hours[members]) for _, members in learned], settings,
            self.n_jobs, self.dask_scheduler,
        )
        self.curves_: Dict[str, Curve] = {}
        self.bounds_: Dict[str, Curve] = {}
        self.fits_: Dict[str, CodeFit] = {}
        self.scores_: Dict[str, FloatArray] = {}
        for (code, _), (curve, bound, code_fit, scores) in zip(learned, fitted):
            self.curves_[code], self.bounds_[code], self.fits_[code] = curve, bound, code_fit
            self.scores_[code] = scores
        self.skipped_: Dict[str, int] = {
            rows.names[p]: int(len(members)) for p, members in groups
            if len(members) < self.min_rows_per_code
        }
        return self

    def to_dispatch_model(self) -> DispatchModel:
        """The published model: each code's curve, upper bound and trained orders range."""
        check_is_fitted(self)
        ranges = {code: fit.orders_range for code, fit in self.fits_.items()}
        return with_bounds(DispatchModel(dict(self.curves_)), self.bounds_, ranges)

    def fit_result(self) -> FitResult:
        """The exported model with the choice made per code and the codes skipped."""
        check_is_fitted(self)
        return FitResult(self.to_dispatch_model(), dict(self.fits_), dict(self.skipped_))


def fit_model(product_codes: Any, orders_placed: Any, hours_to_dispatch: Any,
              **params: Any) -> FitResult:
    """Fit a DispatchTimeRegressor (``params`` are its own) on three columns: a shorthand."""
    regressor = DispatchTimeRegressor(**params)
    return regressor.fit(features(product_codes, orders_placed), hours_to_dispatch).fit_result()
