"""Partial pooling: a curve for every part the shop has sold, however few its rows.

Training only. :class:`PooledDispatchRegressor` composes today's
:class:`~pipeline.training.estimator.DispatchTimeRegressor` with a random-effects model of the tail:

1. a part with at least ``min_rows_per_code`` rows in the newest tranche keeps its own curve
   and bound, fitted on those rows (basis ``"product"``);
2. the catalogue-wide curve ``C(x)`` is fitted on all newest rows with the same family
   machinery and resampled on at most ``catalogue_knots`` knots;
3. every part ``p`` and every tranche ``t`` (0 = newest, older ones from the history) share
   ``hours ~ L[t] * (m[p] * C(x) + a[p])``: ``L`` is the warehouse-wide level of a week
   (``L[0] = 1``), ``m`` the part's factor and ``a`` its shift. A first pass without shifts
   (:class:`Offsets`: alternating closed forms, bincount, no per-part fit) gives the levels and
   the rows' spread; then each part's ``(m, a)`` is a random effect with a 2x2 normal prior
   (:class:`Shifts`), its posterior a closed-form 2x2 solve vectorised over parts, the prior
   and the noise estimated by EM (empirical Bayes), the levels refined in turn. A part with
   few rows lands near the typical part, one with many near its own line in ``C``;
4. a part with fewer rows in the newest tranche, or none there but some in the history, gets
   ``m[p] * C(x) + a[p]`` (basis ``"pooled"``) on the catalogue curve's knots, with ``m >= 0``
   and ``a >= -m C(0)``: monotone and non-negative;
5. its p90 bound is that estimate ``+ q[b] * s(x)``: ``s`` a spread growing with the queue, and
   ``q[b]`` a split-conformal quantile of leave-one-out scores (each row predicted from its
   part's other rows) of the parts whose rows-count falls in the same bucket ``b``, so the bound
   widens with what a part's few rows cannot tell. The typical part's curve gets a bound
   calibrated on every row predicted from no rows of its own part (``CatalogueCurve``).

``offsets="factor"`` keeps the factor-only model (``a = 0``), the first pass alone: it suits a
world where parts differ by a factor only (``pipeline.simulate``); the shifts, the default,
also fit parts that differ by a constant or in shape (``testing_support/worlds.py``) and lose
nothing on the first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import LinearRegression
from sklearn.utils.validation import check_array, check_is_fitted

from pipeline.model_format import (
    BOUND_QUANTILE, POOLED_BASIS, PRODUCT_BASIS, CatalogueCurve, Curve, DispatchModel,
)
from pipeline.training.bound import LABEL_SCALE_FLOOR, SPREAD_FLOOR, conformal_quantile, label_scale
from pipeline.training.estimator import (
    CODE, DEFAULT_CV_MAX_ROWS, DEFAULT_FAMILIES, DEFAULT_FOLDS, DEFAULT_MIN_ROWS_PER_CODE,
    ORDERS, ROUNDING_TOLERANCE, SIMPLER_TOLERANCE, DispatchTimeRegressor, FitResult, _columns,
    fit_code, predict_per_code,
)

TRANCHE = "tranche"
DEFAULT_CATALOGUE_KNOTS = 10
DEFAULT_LEVEL_ITERATIONS = 5
DEFAULT_SHIFT_ITERATIONS = 50
FACTOR = "factor"
FACTOR_AND_SHIFT = "factor+shift"
OFFSET_MODELS = (FACTOR, FACTOR_AND_SHIFT)
LEFT_OUT_CHUNK = 1 << 15
# Buckets of "rows a prediction rests on": 0, 1, 2, 3-4, 5-8, 9-16, 17-32, 33 and more.
ROWS_BUCKET_EDGES = (1, 2, 3, 5, 9, 17, 33)
MIN_BUCKET_ROWS = 200
_LEVEL_FLOOR = 1e-3

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PoolingSummary:
    """What the pooling learned: for the metadata and the report."""

    pooled_parts: int
    product_parts: int
    prior_factor: float
    noise_variance: float
    between_variance: float
    shrinkage_rows: float
    tranche_levels: Tuple[float, ...]
    bucket_quantiles: Dict[str, float]
    catalogue_quantile: float
    spread: Tuple[float, float]
    offsets: str = FACTOR
    prior_shift: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready form."""
        return {
            "parts": {PRODUCT_BASIS: self.product_parts, POOLED_BASIS: self.pooled_parts},
            "offsets": self.offsets,
            "prior_factor": round(self.prior_factor, 6),
            "prior_shift": round(self.prior_shift, 6),
            "noise_variance": round(self.noise_variance, 6),
            "between_variance": round(self.between_variance, 6),
            "shrinkage_rows": round(self.shrinkage_rows, 6),
            "tranche_levels": [round(v, 6) for v in self.tranche_levels],
            "bound_quantile_by_rows": {k: round(v, 6) for k, v in self.bucket_quantiles.items()},
            "catalogue_bound_quantile": round(self.catalogue_quantile, 6),
            "spread": [round(v, 6) for v in self.spread],
        }


class PartOffsets(NamedTuple):
    """Each part's factor and shift, the typical part's, the week levels and the bound's inputs.

    ``left_out`` is each row's estimate from its part's other rows (``others`` of them);
    ``between`` is the between-part variance of the factor (factor model) or of the level at the
    typical queue (factor and shift), so ``noise / between`` is the shrinkage in rows.
    """

    factor: FloatArray
    shift: FloatArray
    prior: Tuple[float, float]
    levels: FloatArray
    left_out: FloatArray
    others: FloatArray
    spread: Tuple[float, float]
    noise: float
    between: float


class Offsets:
    """Per-part factors and per-tranche levels, estimated together (vectorised closed forms).

    Rows are summed into a dense parts x tranches table once; given the variance components,
    the levels solve a small linear system (one equation per older tranche), and the variance
    components are re-estimated from the levels: ``iterations`` rounds of both.
    """

    def __init__(self, index: IntArray, tranche: IntArray, hours: FloatArray,
                 level: FloatArray, parts: int, iterations: int) -> None:
        tranches = int(tranche.max()) + 1
        cell = index * tranches + tranche
        size = parts * tranches

        def table(weights: Optional[FloatArray] = None) -> FloatArray:
            summed: FloatArray = np.bincount(cell, weights=weights, minlength=size).reshape(
                parts, tranches).astype(np.float64)
            return summed

        relative = hours / level
        counts, ratios, squares = table(), table(relative), table(relative * relative)
        expected_sum = table(level)
        hours_sum = np.bincount(tranche, hours, tranches).astype(np.float64)
        self.n: FloatArray = counts.sum(axis=1)
        seen = self.n > 0
        rows = np.where(seen, self.n, 1.0)
        inverse = np.ones(tranches)
        for _ in range(max(iterations, 1)):
            self.total: FloatArray = ratios @ inverse
            mean = np.where(seen, self.total / rows, 1.0)
            free = float((self.n[seen] - 1.0).sum())
            within = float((squares @ (inverse * inverse) - self.n * mean * mean)[seen].sum())
            self.noise = max(within / free if free > 0 else float(np.var(mean[seen])), 1e-12)
            spread_of_means = float(np.var(mean[seen])) if seen.sum() > 1 else 0.0
            sampling = float(np.mean(self.noise / rows[seen]))
            self.between = max(spread_of_means - sampling, 1e-6 * self.noise)
            weight = 1.0 / (self.noise / rows + self.between)
            self.prior = float(np.sum(weight[seen] * mean[seen]) / np.sum(weight[seen]))
            self.k = self.noise / self.between
            shrink = self.n / (self.n + self.k)
            if tranches > 1:
                inverse = _solve_levels(expected_sum, ratios, hours_sum, shrink / rows,
                                        (1.0 - shrink) * self.prior, inverse)
        self.inverse = inverse
        self.levels: FloatArray = 1.0 / inverse
        self.total = ratios @ inverse
        mean = np.where(seen, self.total / rows, self.prior)
        self.factor: FloatArray = np.maximum(
            self.prior + self.n / (self.n + self.k) * (mean - self.prior), 0.0)
        self.ratio = relative * inverse[tranche]

    def left_out(self, index: IntArray) -> Tuple[FloatArray, FloatArray]:
        """Each row's part factor estimated without it, and how many rows that rests on."""
        others = self.n[index] - 1.0
        total = self.total[index] - self.ratio
        mean = np.divide(total, others, out=np.full(len(index), self.prior), where=others > 0)
        factor = np.maximum(self.prior + others / (others + self.k) * (mean - self.prior), 0.0)
        return factor, others


class Shifts:
    """Per-part factors and shifts, ``hours / L[t] ~ m[p] C(x) + a[p]``: random effects by EM.

    In centred form ``z = b + m (C(x) - c)``, ``c`` the rows' weighted mean of ``C``, each part's
    ``(b, m)`` has a normal prior (mean ``centre``, 2x2 covariance ``between``) and its rows a
    noise variance ``noise / weight``. Five weighted sums per part (bincount) give each part's
    posterior in closed form, a 2x2 solve vectorised over parts; ``iterations`` rounds of EM
    estimate the prior and the noise from the data (empirical Bayes). A part with few rows
    lands near the typical part, one with many near its own least-squares line in ``C``.
    """

    def __init__(self, index: IntArray, curve: FloatArray, scaled: FloatArray,
                 weight: FloatArray, parts: int, iterations: int, floor: float) -> None:
        self.index, self.curve, self.scaled, self.weight = index, curve, scaled, weight
        self.mean_curve = float(np.average(curve, weights=weight))
        self.floor = floor
        d = curve - self.mean_curve

        def summed(values: FloatArray) -> FloatArray:
            result: FloatArray = np.bincount(index, weights=values, minlength=parts).astype(
                np.float64)
            return result

        self.n: FloatArray = np.bincount(index, minlength=parts).astype(np.float64)
        wd = weight * d
        self.sums = (summed(weight), summed(wd), summed(wd * d), summed(weight * scaled),
                     summed(wd * scaled))
        squares = summed(weight * scaled * scaled)
        seen = self.n > 0
        rows = float(self.n.sum())
        s00, s01, s11, r0, r1 = (v[seen] for v in self.sums)
        q = squares[seen]
        self.centre = (float(r0.sum() / s00.sum()), float(r1.sum() / max(s11.sum(), 1e-300)))
        self.noise = max(float((q - r0 * r0 / s00).sum()) / rows, 1e-12)
        tiny = 1e-9 * self.noise
        self.between = (max(float(np.var(r0 / s00)), tiny), 0.0,
                        max((0.1 * self.centre[1]) ** 2, tiny))
        for _ in range(max(iterations, 1)):
            b, m, v00, v01, v11 = self.posterior(s00, s01, s11, r0, r1)
            self.centre = (float(b.mean()), float(m.mean()))
            db, dm = b - self.centre[0], m - self.centre[1]
            c00 = max(float(np.mean(db * db + v00)), tiny)
            c11 = max(float(np.mean(dm * dm + v11)), tiny)
            # A correlation of +-1 would make the prior singular: keep it just inside.
            limit = 0.999 * float(np.sqrt(c00 * c11))
            self.between = (c00, min(max(float(np.mean(db * dm + v01)), -limit), limit), c11)
            expected = (q - 2.0 * (b * r0 + m * r1) + s00 * (b * b + v00)
                        + 2.0 * s01 * (b * m + v01) + s11 * (m * m + v11))
            self.noise = max(float(expected.sum()) / rows, 1e-12)
            tiny = 1e-9 * self.noise
        b, m, _, _, _ = self.posterior(*self.sums)
        self.factor, self.shift = self.clipped(b, m)

    def posterior(self, s00: FloatArray, s01: FloatArray, s11: FloatArray, r0: FloatArray,
                  r1: FloatArray) -> Tuple[FloatArray, ...]:
        """Posterior means (b, m) and covariances (v00, v01, v11) of parts with these sums."""
        t00, t01, t11 = self.between
        det = t00 * t11 - t01 * t01
        i00, i01, i11 = t11 / det, -t01 / det, t00 / det
        p00, p01, p11 = s00 / self.noise + i00, s01 / self.noise + i01, s11 / self.noise + i11
        g0 = r0 / self.noise + i00 * self.centre[0] + i01 * self.centre[1]
        g1 = r1 / self.noise + i01 * self.centre[0] + i11 * self.centre[1]
        pdet = p00 * p11 - p01 * p01
        v00, v01, v11 = p11 / pdet, -p01 / pdet, p00 / pdet
        return v00 * g0 + v01 * g1, v01 * g0 + v11 * g1, v00, v01, v11

    def clipped(self, b: FloatArray, m: FloatArray) -> Tuple[FloatArray, FloatArray]:
        """Factor >= 0 and shift >= -factor * C(0), keeping the level at the mean curve."""
        factor = np.maximum(m, 0.0)
        shift = np.maximum(b - factor * self.mean_curve, -factor * self.floor)
        return factor, shift

    def prior(self) -> Tuple[float, float]:
        """The typical part's factor and shift."""
        factor, shift = self.clipped(np.asarray(self.centre[:1]), np.asarray(self.centre[1:]))
        return float(factor[0]), float(shift[0])

    def left_out(self) -> Tuple[FloatArray, FloatArray]:
        """Each row's prediction from its part's other rows, and how many rows that rests on."""
        estimate = np.empty(len(self.index))
        for start in range(0, len(self.index), LEFT_OUT_CHUNK):
            rows = slice(start, start + LEFT_OUT_CHUNK)
            i, w, z = self.index[rows], self.weight[rows], self.scaled[rows]
            d = self.curve[rows] - self.mean_curve
            s00, s01, s11, r0, r1 = (v[i] for v in self.sums)
            b, m, _, _, _ = self.posterior(s00 - w, s01 - w * d, s11 - w * d * d,
                                           r0 - w * z, r1 - w * d * z)
            factor, shift = self.clipped(b, m)
            estimate[rows] = factor * self.curve[rows] + shift
        return estimate, self.n[self.index] - 1.0


def _shifts_and_levels(
    index: IntArray, tranche: IntArray, hours: FloatArray, curve: FloatArray, weight: FloatArray,
    levels: FloatArray, parts: int, iterations: int, rounds: int, floor: float,
) -> Tuple[Shifts, FloatArray]:
    """The factors and shifts, and the week levels they imply, alternating ``rounds`` times.

    Starting from the factor model's levels, each older tranche's level is the weighted
    least-squares scale of its hours on the parts' fitted curves; the newest stays at 1.
    """
    shifts = Shifts(index, curve, hours / levels[tranche], weight, parts, iterations, floor)
    for _ in range(max(rounds, 0)):
        fitted = shifts.factor[index] * curve + shifts.shift[index]
        top = np.bincount(tranche, weight * hours * fitted, len(levels))
        bottom = np.bincount(tranche, weight * fitted * fitted, len(levels))
        scale = top / np.where(bottom > 0, bottom, 1.0)
        levels = np.where((bottom > 0) & (scale > 0), scale, levels)
        levels[0] = 1.0
        shifts = Shifts(index, curve, hours / levels[tranche], weight, parts, iterations, floor)
    return shifts, levels


def _solve_levels(expected: FloatArray, ratios: FloatArray, hours: FloatArray,
                  gain: FloatArray, fixed: FloatArray, previous: FloatArray) -> FloatArray:
    """Each tranche's inverse level u (u[0] = 1) with sum(hours) = sum(factor * expected).

    With the factor ``fixed + gain * (ratios @ u)`` per part, tranche t's balance
    ``hours[t] u[t] = expected[:, t] @ factor`` is linear in u; the newest tranche anchors it.
    """
    coupling = (expected * gain[:, None]).T @ ratios
    system = np.diag(hours) - coupling
    rhs = expected.T @ fixed - system[:, 0]
    try:
        solved = np.linalg.solve(system[1:, 1:], rhs[1:])
    except np.linalg.LinAlgError:
        return previous
    if not (np.isfinite(solved).all() and (solved > 0).all()):
        return previous
    result: FloatArray = np.concatenate(([1.0], solved))
    return result


def rows_bucket(rows: FloatArray) -> IntArray:
    """The bucket of a rows-count (see ROWS_BUCKET_EDGES)."""
    bucket: IntArray = np.searchsorted(np.asarray(ROWS_BUCKET_EDGES), rows, side="right")
    return bucket


def bucket_names() -> List[str]:
    """Readable names of the rows buckets: '0', '1', '2', '3-4', ..., '33+'."""
    edges = (0,) + ROWS_BUCKET_EDGES
    names = []
    for low, high in zip(edges, edges[1:]):
        names.append(str(low) if high == low + 1 else f"{low}-{high - 1}")
    return names + [f"{edges[-1]}+"]


def bucket_quantiles(scores: FloatArray, buckets: IntArray, level: float) -> FloatArray:
    """The conformal quantile per bucket; a sparse bucket borrows its neighbours' rows."""
    count = len(ROWS_BUCKET_EDGES) + 1
    sizes = np.bincount(buckets, minlength=count)
    result = np.empty(count)
    for b in range(count):
        low, high = b, b + 1
        while sizes[low:high].sum() < MIN_BUCKET_ROWS and (low > 0 or high < count):
            low, high = max(low - 1, 0), min(high + 1, count)
        chosen = (buckets >= low) & (buckets < high)
        result[b] = conformal_quantile(scores[chosen], level) if chosen.any() else 0.0
    return result


def _spread(orders: FloatArray, scaled: FloatArray, estimate: FloatArray) -> Tuple[float, float]:
    """The spread line ``a + b x`` of the rows' absolute residuals (``a``, ``b`` >= 0, floored)."""
    residuals = scaled - estimate
    floor = SPREAD_FLOOR * float(np.mean(np.abs(residuals))) + LABEL_SCALE_FLOOR * label_scale(
        scaled)
    line = LinearRegression(positive=True).fit(orders[:, None], np.abs(residuals))
    return max(float(line.intercept_), floor), float(line.coef_[0])


def _catalogue_shape(orders: FloatArray, hours: FloatArray, regressor: "PooledDispatchRegressor",
                     knots: int) -> Curve:
    """The catalogue-wide curve on all newest rows, resampled on at most ``knots`` knots."""
    full = fit_code(orders, hours, tuple(regressor.families), regressor.folds,
                    regressor.random_state, regressor.cv_max_rows, regressor.relative_tolerance,
                    regressor.rounding_tolerance, regressor.bound_level).curve
    top = float(orders.max())
    inner = np.quantile(orders, np.linspace(0.0, 1.0, max(knots - 2, 2)))
    grid = np.unique(np.concatenate(([0.0], inner, [top + max(top - float(orders.min()), 1.0)])))
    values = np.maximum.accumulate(np.maximum(full.predict(grid), 0.0))
    return Curve(tuple(float(k) for k in grid), tuple(float(v) for v in values))


class PooledDispatchRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Hours to dispatch for every part seen: its own curve when it has the rows, else pooled.

    ``X`` has ``product_code``, ``orders_placed`` and optionally ``tranche`` (0 = the newest
    tranche, 1, 2, ... older ones; absent: all newest). See the module docstring for the model.
    ``bases_`` says which curve each part got; ``to_dispatch_model`` exports format 3.
    ``offsets`` is ``"factor+shift"`` (a factor and a shift per part) or ``"factor"`` (a factor).
    """

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
        dask_scheduler: Optional[str] = None,
        bound_level: float = BOUND_QUANTILE,
        catalogue_knots: int = DEFAULT_CATALOGUE_KNOTS,
        level_iterations: int = DEFAULT_LEVEL_ITERATIONS,
        offsets: str = FACTOR_AND_SHIFT,
        shift_iterations: int = DEFAULT_SHIFT_ITERATIONS,
    ) -> None:
        self.families = families
        self.folds = folds
        self.min_rows_per_code = min_rows_per_code
        self.cv_max_rows = cv_max_rows
        self.relative_tolerance = relative_tolerance
        self.rounding_tolerance = rounding_tolerance
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.dask_scheduler = dask_scheduler
        self.bound_level = bound_level
        self.catalogue_knots = catalogue_knots
        self.level_iterations = level_iterations
        self.offsets = offsets
        self.shift_iterations = shift_iterations

    def product_regressor(self) -> DispatchTimeRegressor:
        """The per-part estimator this one composes, with the same settings."""
        shared = DispatchTimeRegressor().get_params()
        return DispatchTimeRegressor(**{name: getattr(self, name) for name in shared})

    def fit(self, X: pd.DataFrame, y: Any) -> "PooledDispatchRegressor":
        """Fit the per-part curves, the catalogue curve, the offsets and the bounds."""
        if self.catalogue_knots < 3:
            raise ValueError("catalogue_knots must be at least 3")
        if self.offsets not in OFFSET_MODELS:
            raise ValueError(f"offsets must be one of {OFFSET_MODELS}, not {self.offsets!r}")
        names, index, orders = _columns(X)
        hours = check_array(np.asarray(y), ensure_2d=False, dtype=np.float64)
        if len(hours) != len(orders):
            raise ValueError(f"X has {len(orders)} rows but y has {len(hours)}")
        tranche = (np.zeros(len(orders), dtype=np.int64) if TRANCHE not in X else
                   check_array(X[[TRANCHE]], dtype=np.int64)[:, 0])
        if (tranche < 0).any():
            raise ValueError(f"{TRANCHE} must be >= 0 (0 is the newest tranche)")
        newest = tranche == 0
        if not newest.any():
            raise ValueError("X has no row of the newest tranche (tranche 0)")
        frame = pd.DataFrame({CODE: pd.Categorical.from_codes(index[newest], names),
                              ORDERS: orders[newest]})
        self.product_ = self.product_regressor().fit(frame, hours[newest])
        self.catalogue_shape_ = _catalogue_shape(
            orders[newest], hours[newest], self, self.catalogue_knots)
        self._fit_pooled(names, index, tranche, orders, hours)
        self.n_features_in_ = 2
        self.feature_names_in_ = np.asarray([CODE, ORDERS], dtype=object)
        return self

    def _fit_pooled(self, names: List[str], index: IntArray, tranche: IntArray,
                    orders: FloatArray, hours: FloatArray) -> None:
        shape = self.catalogue_shape_
        level = shape.predict(orders)
        level = np.maximum(level, _LEVEL_FLOOR * float(np.mean(level)) + 1e-12)
        fitted = self._part_offsets(index, tranche, orders, hours, level, len(names))
        prior, spread, others = fitted.prior, fitted.spread, fitted.others
        scaled = hours / fitted.levels[tranche]
        scores = (scaled - fitted.left_out) / (spread[0] + spread[1] * orders)
        newest_rows = np.bincount(index[tranche == 0], minlength=len(names))
        # Calibrate on the rows of the parts that get a pooled curve (unless they are too few):
        # a common part's own shape, which its pooled curve would miss, must not widen them.
        calibrating = newest_rows[index] < self.min_rows_per_code
        if calibrating.sum() < MIN_BUCKET_ROWS:
            calibrating = np.ones(len(index), dtype=bool)
        quantiles = bucket_quantiles(scores[calibrating], rows_bucket(others[calibrating]),
                                     self.bound_level)
        prior_scores = (scaled - (prior[0] * level + prior[1])) / (spread[0] + spread[1] * orders)
        catalogue_q = max(conformal_quantile(prior_scores, self.bound_level), quantiles[0])

        knots = np.asarray(shape.knots)
        base = np.asarray(shape.values)
        width = spread[0] + spread[1] * knots
        knots_t = shape.knots
        typical = prior[0] * base + prior[1]
        self.catalogue_ = CatalogueCurve(
            Curve(knots_t, tuple(float(v) for v in typical)),
            Curve(knots_t, tuple(float(v) for v in typical + catalogue_q * width)))
        seen = np.bincount(index, minlength=len(names)).astype(np.float64)
        pooled = np.flatnonzero((seen > 0) & (newest_rows < self.min_rows_per_code))
        estimate = fitted.factor[pooled, None] * base[None, :] + fitted.shift[pooled, None]
        upper = estimate + quantiles[rows_bucket(seen[pooled])][:, None] * width[None, :]
        low = np.full(len(names), np.inf)
        high = np.full(len(names), -np.inf)
        np.minimum.at(low, index, orders)
        np.maximum.at(high, index, orders)
        codes = [names[p] for p in pooled]
        self.curves_: Dict[str, Curve] = dict(self.product_.curves_)
        self.bounds_: Dict[str, Curve] = dict(self.product_.bounds_)
        self.ranges_: Dict[str, Tuple[float, float]] = {
            code: fit.orders_range for code, fit in self.product_.fits_.items()}
        self.bases_: Dict[str, str] = {code: PRODUCT_BASIS for code in self.product_.curves_}
        for code, e, u, a, b in zip(codes, estimate.tolist(), upper.tolist(),
                                    low[pooled].tolist(), high[pooled].tolist()):
            self.curves_[code] = Curve(knots_t, tuple(e))
            self.bounds_[code] = Curve(knots_t, tuple(u))
            self.ranges_[code] = (a, b)
            self.bases_[code] = POOLED_BASIS
        self.factors_: Dict[str, float] = dict(zip(codes, fitted.factor[pooled].tolist()))
        self.shifts_: Dict[str, float] = dict(zip(codes, fitted.shift[pooled].tolist()))
        self.rows_: Dict[str, int] = {names[p]: int(seen[p]) for p in np.flatnonzero(seen > 0)}
        self.summary_ = PoolingSummary(
            pooled_parts=len(codes), product_parts=len(self.product_.curves_),
            prior_factor=prior[0], noise_variance=fitted.noise,
            between_variance=fitted.between, shrinkage_rows=fitted.noise / fitted.between,
            tranche_levels=tuple(float(v) for v in fitted.levels),
            bucket_quantiles=dict(zip(bucket_names(), (float(q) for q in quantiles))),
            catalogue_quantile=float(catalogue_q), spread=spread, offsets=self.offsets,
            prior_shift=prior[1],
        )

    def _part_offsets(self, index: IntArray, tranche: IntArray, orders: FloatArray,
                      hours: FloatArray, level: FloatArray, parts: int) -> PartOffsets:
        """The factor model's levels and factors, refined by shifts unless ``offsets`` is factor."""
        offsets = Offsets(index, tranche, hours, level, parts, self.level_iterations)
        factor, others = offsets.left_out(index)
        scaled = hours / offsets.levels[tranche]
        spread = _spread(orders, scaled, factor * level)
        if self.offsets == FACTOR:
            return PartOffsets(offsets.factor, np.zeros(parts), (offsets.prior, 0.0),
                               offsets.levels, factor * level, others, spread, offsets.noise,
                               offsets.between)
        width = spread[0] + spread[1] * orders
        weight = 1.0 / (width * width)
        shifts, levels = _shifts_and_levels(
            index, tranche, hours, level, weight / float(np.mean(weight)), offsets.levels, parts,
            self.shift_iterations, self.level_iterations, float(self.catalogue_shape_.values[0]))
        estimate, others = shifts.left_out()
        spread = _spread(orders, hours / levels[tranche], estimate)
        return PartOffsets(shifts.factor, shifts.shift, shifts.prior(), levels, estimate, others,
                           spread, shifts.noise, shifts.between[0])

    def predict(self, X: pd.DataFrame) -> FloatArray:
        """Estimated hours per row; KeyError names the first part the model has never seen."""
        check_is_fitted(self)
        return predict_per_code(X, self.curves_)

    def predict_upper(self, X: pd.DataFrame) -> FloatArray:
        """Each row's p90 bound."""
        check_is_fitted(self)
        return predict_per_code(X, self.bounds_)

    def to_dispatch_model(self) -> DispatchModel:
        """The published model, format 3: every part's curve, bound, range and basis."""
        check_is_fitted(self)
        return DispatchModel(dict(self.curves_), dict(self.bounds_), dict(self.ranges_),
                             dict(self.bases_), self.catalogue_)

    def fit_result(self) -> FitResult:
        """The exported model with the per-part fits and what the pooling learned."""
        check_is_fitted(self)
        return FitResult(self.to_dispatch_model(), dict(self.product_.fits_), {},
                         self.summary_.to_dict())
