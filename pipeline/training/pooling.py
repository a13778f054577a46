"""Partial pooling: a curve for every part the shop has sold, however few its rows.

Training only. :class:`PooledDispatchRegressor` composes the per-part
:class:`~pipeline.training.estimator.DispatchTimeRegressor` with a random-effects model of the
whole catalogue, fitted on a log scale, where dispatch times are multiplicative and their heavy
tail is tame:

1. a part with at least ``min_rows_per_code`` rows in the newest tranche keeps its own curve
   and bound (basis ``"product"``), fitted on its rows of the whole window, each older row
   moved to the newest week's level (step 4's levels);
2. the catalogue-wide curve ``C(x)`` is fitted on all newest rows with the same machinery (a
   flat median where ``orders_placed`` carries no signal) and resampled on at most
   ``catalogue_knots`` knots;
3. every row of part ``p`` in tranche ``t`` (0 = newest, older ones from the history) shares
   ``log(hours + d) ~ L[t] + a[p] + m[p] * log(C(x) + d)``: ``L`` is the warehouse-wide level of
   a week (``L[0] = 0``), ``exp(a[p])`` the part's factor and ``m[p]`` its power on the
   catalogue curve (``offsets="factor"``: ``m = 1``); ``d`` is 1% of the median hours. Each
   part's ``(a, m)`` is a random effect with a 2x2 normal prior: its posterior mean is a
   closed-form 2x2 solve, vectorised over parts, and the prior and the noise are estimated by
   EM (empirical Bayes). Rows are weighted by the spread of their residuals (busy days are
   noisier) and by Huber's weights, so a forgotten parcel does not drag a part. A part with two
   rows lands near the typical part, one with three hundred near its own line;
4. the levels of the weeks are fitted with the parts, and next week's level is forecast by a
   local-level model (a random walk, plus weekly noise when the likelihood says so), each week
   weighed by how many rows measure it: one thin week moves the forecast little;
5. the median of the residuals is added back, so an estimate is the conditional median;
6. a part with fewer rows in the newest tranche, or none there but some in the history, gets
   ``exp(L + a[p] + m[p] log(C(x) + d)) - d`` on the catalogue curve's knots (basis
   ``"pooled"``), monotone (``m >= 0``) and non-negative; the typical part's curve answers parts
   never seen (the ``catalogue`` curve).

The p90 bound is calibrated on rows the model did not see, later weeks first
(:func:`out_of_time_scores`): the same fit on the tranches older than the newest predicts the
newest, the fit on those older than the second predicts the second, and so on until enough rows
(``calibration_rows``) or ``calibration_weeks`` weeks. Each row's score is its error in units of
the model's own margin (a product part's conformal margin; a pooled part's log-scale spread
``s(x)``), and the bound multiplies the margin by the split-conformal quantile of the scores
of its group: product parts, and the other parts by how many rows their estimate rests on
(buckets 0, 1, 2, 3-4, 5-8, 9-16, 17-32, 33+; 0 = never seen, the catalogue curve). A group
with fewer than 200 scores borrows its neighbours'. A store's first tranche has no later week:
its rows are split in folds instead, and the quantile is taken at a wider level (half the miss
rate), since a week's own rows cannot show how the next week differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.linear_model import LinearRegression
from sklearn.utils.validation import check_is_fitted

from pipeline.model_format import (
    BOUND_QUANTILE, CATALOGUE_BASIS, POOLED_BASIS, PRODUCT_BASIS, CatalogueCurve, Curve,
    DispatchModel, rows_by_code, upper_bound_curve,
)
from pipeline.training.bound import (
    LABEL_SCALE_FLOOR, SPREAD_FLOOR, conformal_quantile, label_scale,
)
from pipeline.training.estimator import (
    CODE, DEFAULT_CV_MAX_ROWS, DEFAULT_FAMILIES, DEFAULT_FOLDS, DEFAULT_MIN_ROWS_PER_CODE,
    ORDERS, ROUNDING_TOLERANCE, SIMPLER_TOLERANCE, TRANCHE, DispatchRegressorBase,
    ABSOLUTE, FLAT, DispatchTimeRegressor, FitResult, FittedCode, Rows, fit_codes, fit_curve,
)

DEFAULT_CATALOGUE_KNOTS = 10
DEFAULT_LEVEL_ITERATIONS = 5
DEFAULT_SHIFT_ITERATIONS = 50
DEFAULT_CALIBRATION_ROWS = 2000
DEFAULT_CALIBRATION_WEEKS = 8
FACTOR = "factor"
FACTOR_AND_POWER = "factor+power"
OFFSET_MODELS = (FACTOR, FACTOR_AND_POWER)
# log(hours + d): d is this share of the median hours, so hours of 0 stay finite.
LOG_OFFSET_SHARE = 0.01
# Huber's weights, in units of a row's spread: rows further out count as if at this distance.
HUBER_LIMIT = 1.5
LEFT_OUT_CHUNK = 1 << 15
# Buckets of "rows a prediction rests on": 0, 1, 2, 3-4, 5-8, 9-16, 17-32, 33 and more.
ROWS_BUCKET_EDGES = (1, 2, 3, 5, 9, 17, 33)
MIN_BUCKET_ROWS = 200
PRODUCT_GROUP = len(ROWS_BUCKET_EDGES) + 1
# The local-level model's variances are searched on this grid (log-scale units squared).
LEVEL_VARIANCES = np.concatenate(([0.0], np.geomspace(1e-5, 1.0, 31)))
# A weekly noise besides the random walk is kept only when it gains this much log-likelihood
# (Akaike's price of one more parameter): with a handful of weeks a random walk is the default.
WEEKLY_NOISE_GAIN = 1.0
# A constant level is kept over a random walk only when the likelihood prefers it by this much:
# with two weeks both explain the step alike (their grids decide), and the walk is the default.
STAYS_GAIN = 0.5
WALK, STAYS, WALK_AND_NOISE = ("random walk", "constant level + weekly noise",
                               "random walk + weekly noise")
OUT_OF_TIME = "later weeks"
WITHIN_WEEK = "each row against the rest of its week"

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class Shifts:
    """Per-part log factors and powers, ``z ~ a[p] + m[p] g(x)``: random effects by EM.

    In centred form ``z = b + m (g(x) - c)``, ``c`` the rows' weighted mean of ``g``, each part's
    ``(b, m)`` has a normal prior (mean ``centre``, 2x2 covariance ``between``) and its rows a
    noise variance ``noise / weight``. Five weighted sums per part (bincount) give each part's
    posterior in closed form, a 2x2 solve vectorised over parts; ``iterations`` rounds of EM
    estimate the prior and the noise from the data (empirical Bayes). With ``slopes`` False
    every part's ``m`` is the typical one, 1, and only ``b`` is a random effect.
    """

    def __init__(self, index: IntArray, curve: FloatArray, scaled: FloatArray,
                 weight: FloatArray, parts: int, iterations: int, slopes: bool) -> None:
        self.index, self.curve, self.scaled, self.weight = index, curve, scaled, weight
        self.slopes = slopes
        self.mean_curve = float(np.average(curve, weights=weight))
        d = curve - self.mean_curve
        if not slopes:
            # m fixed at 1: the part's level is fitted to z - g(x) alone.
            scaled = scaled - d
            d = np.zeros_like(d)
            self.scaled = scaled
        self.d = d

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
        self.centre = (float(r0.sum() / s00.sum()), 1.0 if not slopes else float(
            r1.sum() / max(float(s11.sum()), 1e-300)))
        # Moment estimates to start EM from: the noise from the spread within parts (all of it
        # when every part has one row), the between-part variance from that of their means.
        means = r0 / s00
        free = float((self.n[seen] - 1.0).sum())
        total = float(np.sum(q) / s00.sum() - (r0.sum() / s00.sum()) ** 2)
        within = float((q - r0 * means).sum()) / free if free > 0 else total / 2.0
        self.noise = max(within, 1e-12 * max(total, 1e-300), 1e-300)
        tiny = 1e-9 * self.noise
        sampling = float(np.mean(self.noise / s00))
        self.between = (max(float(np.var(means)) - sampling, 0.1 * self.noise), 0.0,
                        max((0.1 * self.centre[1]) ** 2, tiny) if slopes else tiny)
        for _ in range(max(iterations, 1)):
            b, m, v00, v01, v11 = self.posterior(s00, s01, s11, r0, r1)
            db = b - float(b.mean())
            c00 = max(float(np.mean(db * db + v00)), tiny)
            if slopes:
                self.centre = (float(b.mean()), float(m.mean()))
                dm = m - self.centre[1]
                c11 = max(float(np.mean(dm * dm + v11)), tiny)
                # A correlation of +-1 would make the prior singular: keep it just inside.
                limit = 0.999 * float(np.sqrt(c00 * c11))
                self.between = (c00, min(max(float(np.mean(db * dm + v01)), -limit), limit),
                                c11)
            else:
                self.centre = (float(b.mean()), 1.0)
                self.between = (c00, 0.0, tiny)
            expected = (q - 2.0 * (b * r0 + m * r1) + s00 * (b * b + v00)
                        + 2.0 * s01 * (b * m + v01) + s11 * (m * m + v11))
            self.noise = max(float(expected.sum()) / rows, 1e-12)
            tiny = 1e-9 * self.noise
        b, m, v00, _, _ = self.posterior(*self.sums)
        self.level, self.power = self.clipped(b, m)
        # How uncertain each part's level still is (a part never seen: the prior's variance).
        self.level_variance: FloatArray = np.where(self.n > 0, v00, self.between[0])

    def left_out(self) -> Tuple[FloatArray, FloatArray, FloatArray]:
        """Each row's fitted value from its part's other rows alone, the variance left in that
        part's level, and how many rows the value rests on: a within-week test of every row."""
        fitted = np.empty(len(self.index))
        variance = np.empty(len(self.index))
        for start in range(0, len(self.index), LEFT_OUT_CHUNK):
            rows = slice(start, start + LEFT_OUT_CHUNK)
            i, w, z, d = self.index[rows], self.weight[rows], self.scaled[rows], self.d[rows]
            s00, s01, s11, r0, r1 = (v[i] for v in self.sums)
            b, m, v00, _, _ = self.posterior(s00 - w, s01 - w * d, s11 - w * d * d, r0 - w * z,
                                             r1 - w * d * z)
            level, power = self.clipped(b, m)
            fitted[rows] = level + power * self.curve[rows]
            variance[rows] = v00
        return fitted, variance, self.n[self.index] - 1.0

    def posterior(self, s00: FloatArray, s01: FloatArray, s11: FloatArray, r0: FloatArray,
                  r1: FloatArray) -> Tuple[FloatArray, ...]:
        """Posterior means (b, m) and covariances (v00, v01, v11) of parts with these sums."""
        if not self.slopes:
            v00 = 1.0 / (s00 / self.noise + 1.0 / self.between[0])
            b = v00 * (r0 / self.noise + self.centre[0] / self.between[0])
            zero = np.zeros_like(b)
            return b, zero + 1.0, v00, zero, zero
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
        """The log factor ``a`` and the power ``m >= 0`` (so a curve never falls), keeping the
        part's level at the typical queue."""
        power = np.maximum(m, 0.0)
        return b - power * self.mean_curve, power

    def prior(self) -> Tuple[float, float]:
        """The typical part's log factor and power."""
        level, power = self.clipped(np.asarray(self.centre[:1]), np.asarray(self.centre[1:]))
        return float(level[0]), float(power[0])


def local_level_forecast(levels: FloatArray, variances: FloatArray) -> Tuple[float, Dict[str, Any]]:
    """Next week's level from the weeks' (newest first) by a local-level model, and its fit.

    Each week's level is observed with its sampling variance around a level that either walks
    (a random walk, step variance ``q``: next week is like the newest) or stays (a constant
    level with weekly noise ``r``: next week is like the weeks' average, as when a holiday or a
    queue shifts one week and the next comes back); each variance is chosen by maximum
    likelihood on a grid, the constant level is kept when it is likelier by STAYS_GAIN, and
    both together (``q`` and ``r``) only when they gain WEEKLY_NOISE_GAIN more. The forecast
    is the Kalman filter's level after the newest week. A thin week has a large variance and
    moves the forecast little.
    """
    obs, var = levels[::-1], variances[::-1]
    if len(obs) < 2:
        return float(levels[0]), {"weeks": int(len(obs)), "model": "one week", "step_variance":
                                  0.0, "weekly_variance": 0.0, "forecast_variance": 0.0}
    q_all = LEVEL_VARIANCES[:, None]
    r_all = LEVEL_VARIANCES[None, :]
    best: Dict[str, Any] = {}
    zero = np.zeros((1, 1))
    for name, q, r in ((WALK, q_all, zero), (STAYS, zero, r_all), (WALK_AND_NOISE, q_all, r_all)):
        state = np.full(np.broadcast(q, r).shape, obs[0])
        spread = var[0] + r + 0.0 * q
        level_var = np.broadcast_to(spread, state.shape).copy()
        loglik = np.zeros(state.shape)
        for o, v in zip(obs[1:], var[1:]):
            predicted = level_var + q
            total = predicted + v + r
            loglik += -0.5 * (np.log(total) + (o - state) ** 2 / total)
            gain = predicted / total
            state = state + gain * (o - state)
            level_var = (1.0 - gain) * predicted
        i = np.unravel_index(int(np.argmax(loglik)), loglik.shape)
        step, weekly = float(q[i[0], 0]), float(np.broadcast_to(r, loglik.shape)[i])
        best[name] = (float(loglik[i]), float(state[i]), step, weekly,
                      float(level_var[i]) + step + weekly)
    name = STAYS if best[STAYS][0] - best[WALK][0] > STAYS_GAIN else WALK
    if best[WALK_AND_NOISE][0] - best[name][0] > WEEKLY_NOISE_GAIN:
        name = WALK_AND_NOISE
    chosen = best[name]
    return chosen[1], {"weeks": int(len(obs)), "model": name, "step_variance": chosen[2],
                       "weekly_variance": chosen[3], "forecast_variance": chosen[4]}


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


def group_quantiles(scores: FloatArray, groups: IntArray, level: float) -> FloatArray:
    """The conformal quantile per group (rows buckets, then product parts).

    A rows bucket with fewer than MIN_BUCKET_ROWS scores borrows its neighbours' buckets, and
    when all of them together have too few, every score (product parts' too); the product group
    with too few borrows every score. No score at all: 0.
    """
    count = PRODUCT_GROUP + 1
    sizes = np.bincount(groups, minlength=count)
    result = np.zeros(count)
    if len(scores) == 0:
        return result
    buckets = PRODUCT_GROUP
    for b in range(buckets):
        low, high = b, b + 1
        while sizes[low:high].sum() < MIN_BUCKET_ROWS and (low > 0 or high < buckets):
            low, high = max(low - 1, 0), min(high + 1, buckets)
        chosen = (groups >= low) & (groups < high)
        enough = sizes[low:high].sum() >= MIN_BUCKET_ROWS
        result[b] = conformal_quantile(scores[chosen] if enough else scores, level)
    product = groups == PRODUCT_GROUP
    result[PRODUCT_GROUP] = conformal_quantile(
        scores[product] if product.sum() >= MIN_BUCKET_ROWS else scores, level)
    return result


def _spread(distinct: FloatArray, inverse: IntArray, residuals: FloatArray,
            weights: FloatArray) -> Tuple[float, float]:
    """The spread line ``a + b x`` of the rows' absolute residuals (``a``, ``b`` >= 0, floored).

    Fitted on the weighted mean absolute residual of each distinct order count (``distinct``,
    and each row's position among them, ``inverse``): the same line as on the rows, on a few
    hundred points instead of millions.
    """
    floor = SPREAD_FLOOR * float(np.mean(np.abs(residuals))) + LABEL_SCALE_FLOOR
    summed = np.bincount(inverse, weights=weights, minlength=len(distinct))
    held = summed > 0
    means = np.bincount(inverse, weights=weights * np.abs(residuals), minlength=len(distinct))
    line = LinearRegression(positive=True).fit(distinct[held, None],
                                               means[held] / summed[held],
                                               sample_weight=summed[held])
    return max(float(line.intercept_), floor), float(line.coef_[0])


class PooledFit(NamedTuple):
    """One fit of the pooled model: everything needed to predict any part and score rows."""

    names: List[str]
    product: Dict[str, FittedCode]
    knots: FloatArray
    log_curve: FloatArray
    offset: float
    level: FloatArray
    power: FloatArray
    prior: Tuple[float, float]
    levels: FloatArray
    forecast: float
    median_shift: float
    spread: Tuple[float, float]
    rows: FloatArray
    newest_rows: FloatArray
    level_variance: FloatArray
    noise: float
    between: float
    weeks: Dict[str, Any]
    catalogue_family: str
    within_week: Tuple[FloatArray, IntArray]

    def log_estimate(self, part: IntArray, orders: FloatArray,
                     week: Optional[float] = None) -> FloatArray:
        """log(estimate + d) of the pooled curve of each row's part (-1: the typical part), in
        next week (its forecast level) or in a week of level ``week`` (relative to the newest)."""
        g = np.interp(orders, self.knots, self.log_curve)
        known = part >= 0
        level = np.where(known, self.level[np.maximum(part, 0)], self.prior[0])
        power = np.where(known, self.power[np.maximum(part, 0)], self.prior[1])
        at = self.forecast if week is None else week
        result: FloatArray = level + power * g + at + self.median_shift
        return result

    def width(self, part: IntArray, orders: FloatArray, ahead: bool = False) -> FloatArray:
        """The log-scale margin of each row: the rows' spread ``s(x)``, what its part's level
        is still unsure of and, ``ahead`` (for next week), what the forecast of next week's level
        is unsure of, all as mean absolute deviations (``sqrt(2 / pi)`` sd)."""
        unsure = np.where(part >= 0, self.level_variance[np.maximum(part, 0)], self.between)
        spread = self.spread[0] + self.spread[1] * orders
        result: FloatArray = np.sqrt(spread * spread + (2.0 / np.pi) * (
            unsure + (self.forecast_variance if ahead else 0.0)))
        return result

    @property
    def forecast_variance(self) -> float:
        """The variance of the forecast of next week's level (log scale)."""
        return float(self.weeks.get("forecast_variance", 0.0))

    def week_factor(self, week: Optional[float] = None) -> float:
        """How much slower than the newest next week is forecast to be (or a week of level
        ``week`` is): the factor on the product parts' curves."""
        return float(np.exp(self.forecast if week is None else week))


def _catalogue_shape(orders: FloatArray, hours: FloatArray, regressor: "PooledDispatchRegressor",
                     knots: int) -> Tuple[Curve, str]:
    """The catalogue-wide curve on some rows, resampled on at most ``knots`` knots (the rows'
    median when they are too few to cross-validate a curve on)."""
    if len(orders) < 2 * regressor.folds:
        curve, family = fit_curve(orders, hours, FLAT, ABSOLUTE)[0], FLAT
    else:
        [full] = fit_codes([(orders, hours)], regressor.code_settings(), 1)
        curve = full.curve
        family = full.fit.family + ("" if full.fit.family == FLAT else f" ({full.fit.loss})")
    top = float(orders.max())
    inner = np.quantile(orders, np.linspace(0.0, 1.0, max(knots - 2, 2)))
    grid = np.unique(np.concatenate(([0.0], inner, [top + max(top - float(orders.min()), 1.0)])))
    values = np.maximum.accumulate(np.maximum(curve.predict(grid), 0.0))
    return Curve(tuple(float(k) for k in grid), tuple(float(v) for v in values)), family


def fit_pooled(rows: Rows, regressor: "PooledDispatchRegressor",
               within_week: bool = False) -> PooledFit:
    """The pooled model on some rows: product curves, catalogue curve, parts, weeks; with
    ``within_week``, also every row's score against a fit that did not see it (a product part's
    out-of-fold error, any other part's estimate from its other rows), for a bound that has
    no later week to calibrate on."""
    names, index, orders, tranche, found = rows
    assert found is not None
    hours: FloatArray = found
    tranche = tranche - int(tranche.min())
    parts = len(names)
    newest = tranche == 0
    newest_rows = np.bincount(index[newest], minlength=parts).astype(np.float64)
    # The catalogue's shape from the newest week (weeks differ in level and in their queues);
    # from the whole window when the newest week is too thin to cross-validate a curve on.
    source = newest if newest.sum() >= regressor.min_rows_per_code else np.ones_like(newest)
    shape, family = _catalogue_shape(orders[source], hours[source], regressor,
                                     regressor.catalogue_knots)
    offset = LOG_OFFSET_SHARE * float(np.median(hours)) + 1e-9 * label_scale(hours)
    knots = np.asarray(shape.knots)
    log_curve = np.log(np.asarray(shape.values) + offset)
    slopes = regressor.offsets == FACTOR_AND_POWER and bool(
        np.ptp(log_curve) > 1e-6 * (1.0 + float(np.abs(log_curve).max())))
    g = np.interp(orders, knots, log_curve)
    z = np.log(hours + offset)
    weeks = int(tranche.max()) + 1
    levels = np.zeros(weeks)
    weight = np.ones(len(z))
    distinct, inverse = np.unique(orders, return_inverse=True)
    for _ in range(max(regressor.level_iterations, 1)):
        shifts = Shifts(index, g, z - levels[tranche], weight / float(np.mean(weight)), parts,
                        regressor.shift_iterations, slopes)
        fitted = shifts.level[index] + shifts.power[index] * g
        residuals = z - levels[tranche] - fitted
        spread = _spread(distinct, inverse, residuals, weight)
        width = spread[0] + spread[1] * orders
        distance = np.abs(residuals) / width
        weight = np.minimum(1.0, HUBER_LIMIT / np.maximum(distance, 1e-12)) / (width * width)
        per_week = np.bincount(tranche, weights=weight, minlength=weeks)
        levels = np.bincount(tranche, weights=weight * (z - fitted), minlength=weeks) / np.maximum(
            per_week, 1e-300)
        levels = levels - levels[0]
    residuals = z - levels[tranche] - fitted
    normalised = weight / float(np.mean(weight))
    variances = shifts.noise / np.maximum(np.bincount(tranche, weights=normalised,
                                                      minlength=weeks), 1e-12)
    measured = np.bincount(tranche, minlength=weeks) > 0
    forecast, week_model = local_level_forecast(levels[measured], variances[measured])
    median_shift = float(np.median(residuals))
    product = _fit_product_parts(regressor, names, index, orders, hours, tranche,
                                 z - levels[tranche], offset, newest_rows)
    scored: Tuple[FloatArray, IntArray] = (np.zeros(0), np.zeros(0, dtype=np.int64))
    if within_week:
        where = {code: i for i, code in enumerate(names)}
        own = np.zeros(parts, dtype=bool)
        own[[where[code] for code in product.curves_]] = True
        scored = _left_out_scores(shifts, spread, z - levels[tranche] - median_shift, orders,
                                  own[index], product.scores_)
    return PooledFit(
        names=names, product={code: FittedCode(curve, product.bounds_[code], product.fits_[code])
                              for code, curve in product.curves_.items()},
        knots=knots, log_curve=log_curve, offset=offset, level=shifts.level, power=shifts.power,
        prior=shifts.prior(), levels=levels, forecast=forecast,
        median_shift=median_shift, spread=spread, within_week=scored,
        rows=np.bincount(index, minlength=parts).astype(np.float64), newest_rows=newest_rows,
        level_variance=shifts.level_variance,
        noise=shifts.noise, between=shifts.between[0], weeks=week_model,
        catalogue_family=family)


def _fit_product_parts(
    regressor: "PooledDispatchRegressor", names: Sequence[str], index: IntArray,
    orders: FloatArray, hours: FloatArray, tranche: IntArray, at_newest_level: FloatArray,
    offset: float, newest_rows: FloatArray,
) -> DispatchTimeRegressor:
    """Each part with ``min_rows_per_code`` rows in the newest tranche gets its own curve,
    fitted on its rows of every week of the window, each older row moved to the newest week's
    level (the weeks' levels are warehouse-wide): a busy part's curve rests on the window, not
    on one week that a holiday or a queue may have shifted. Older weeks are taken newest first
    up to ``cv_max_rows`` rows a part (its newest week whole), so the busiest parts of a
    13-week window do not multiply the memory the fits take. ``at_newest_level``: each row's
    ``log(hours + offset)`` at the newest week's level."""
    busy = newest_rows[index] >= regressor.min_rows_per_code
    if not busy.any():  # no part of its own: the regressor says so for the newest rows
        busy = tranche == 0
    else:
        order = np.lexsort((tranche, index))
        starts = np.searchsorted(index[order], index[order], side="left")
        position = np.empty(len(index), dtype=np.int64)
        position[order] = np.arange(len(index)) - starts
        cap = np.maximum(newest_rows[index], regressor.cv_max_rows)
        busy &= position < cap
    newest = tranche[busy] == 0
    moved = np.where(newest, hours[busy],
                     np.maximum(np.exp(at_newest_level[busy]) - offset, 0.0))
    frame = pd.DataFrame({CODE: pd.Categorical.from_codes(index[busy], names),
                          ORDERS: orders[busy]})
    return regressor.product_regressor().fit(frame, moved)


def _left_out_scores(shifts: Shifts, spread: Tuple[float, float], target: FloatArray,
                     orders: FloatArray, product_rows: npt.NDArray[np.bool_],
                     product_scores: Dict[str, FloatArray]) -> Tuple[FloatArray, IntArray]:
    """Within-week scores: each pooled row's error against its part's other rows (in units of
    its spread and what its part's level is unsure of, as in PooledFit.width), grouped by how
    many rows that rests on; and the product parts' out-of-fold scores."""
    fitted, variance, others = shifts.left_out()
    width = np.sqrt((spread[0] + spread[1] * orders) ** 2 + (2.0 / np.pi) * variance)
    pooled = ~product_rows
    found = [(target[pooled] - fitted[pooled]) / width[pooled]]
    groups = [rows_bucket(others[pooled])]
    for scores in product_scores.values():
        found.append(scores)
        groups.append(np.full(len(scores), PRODUCT_GROUP, dtype=np.int64))
    return np.concatenate(found), np.concatenate(groups)


def scores_of(fit: PooledFit, part: IntArray, orders: FloatArray, hours: FloatArray,
              week: float) -> Tuple[FloatArray, IntArray]:
    """Each row of a later week (its level ``week`` relative to the fit's newest) scored: its
    error in units of the fit's margin for it, and its calibration group.

    The week's own level is given, as measured by the fit on every row: the scores carry what
    the parts' estimates and the rows' noise miss, while how far next week's level can stray from
    its forecast is the local-level model's to say (PooledFit.width with ``ahead``): one later
    week is one draw of that, which a quantile cannot learn. ``part`` is each row's position in
    the fit's names (-1, or a part without rows in the fit: one it never saw). A product part's
    margin is its own conformal bound's distance from its estimate; any other part's is its
    log-scale width. The group is the part's rows bucket (0: a part the fit never saw) or
    PRODUCT_GROUP.
    """
    scores = (np.log(hours + fit.offset) - fit.log_estimate(part, orders, week)) / fit.width(
        part, orders)
    groups = rows_bucket(np.where(part >= 0, fit.rows[np.maximum(part, 0)], 0.0))
    factor = fit.week_factor(week)
    for position, members in rows_by_code(np.maximum(part, 0), len(fit.names)):
        found = fit.product.get(fit.names[position])
        members = members[part[members] >= 0]
        if found is None or not len(members):
            continue
        estimate = factor * found.curve.predict(orders[members])
        margin = factor * found.bound.predict(orders[members]) - estimate
        scores[members] = (hours[members] - estimate) / np.maximum(
            margin, 1e-12 * (1.0 + np.abs(estimate)))
        groups[members] = PRODUCT_GROUP
    return scores, groups


def _subset(rows: Rows, mask: npt.NDArray[np.bool_], shift: int = 0) -> Rows:
    """The rows under ``mask``, their tranches moved ``shift`` weeks nearer the newest."""
    assert rows.hours is not None
    return Rows(rows.names, rows.part[mask], rows.orders[mask], rows.tranche[mask] - shift,
                rows.hours[mask])


class Calibration(NamedTuple):
    """The bound's quantile per group, on what it was calibrated, and how many scores."""

    quantiles: FloatArray
    source: str
    weeks: int
    rows: int
    level: float
    group_rows: Dict[str, int]


def has_later_weeks(rows: Rows, regressor: "PooledDispatchRegressor") -> bool:
    """Whether the bound can be calibrated on a later week: some tranche after the oldest, and
    older rows enough to fit on."""
    return bool(rows.tranche.max() > 0 and (rows.tranche > 0).sum() >= regressor.folds)


def calibrate(rows: Rows, regressor: "PooledDispatchRegressor", fit: PooledFit) -> Calibration:
    """The bound's quantiles from rows the model did not see: later weeks, else (a store's
    first tranche) every row against a fit without it, at a wider level."""
    assert rows.hours is not None
    scores: List[FloatArray] = []
    groups: List[IntArray] = []
    last = int(rows.tranche.max())
    origin = 0
    while (origin < last and origin < regressor.calibration_weeks
           and sum(map(len, scores)) < regressor.calibration_rows
           and (rows.tranche > origin).sum() >= regressor.folds):
        earlier = fit_pooled(_subset(rows, rows.tranche > origin, origin + 1), regressor)
        later = rows.tranche == origin
        found = scores_of(earlier, rows.part[later], rows.orders[later], rows.hours[later],
                          float(fit.levels[origin] - fit.levels[origin + 1]))
        scores.append(found[0])
        groups.append(found[1])
        origin += 1
    source, level = OUT_OF_TIME, regressor.bound_level
    if not scores:
        source, level = WITHIN_WEEK, (1.0 + regressor.bound_level) / 2.0
        scores, groups = [fit.within_week[0]], [fit.within_week[1]]
    every_score, every_group = np.concatenate(scores), np.concatenate(groups)
    sizes = np.bincount(every_group, minlength=PRODUCT_GROUP + 1)
    labels = bucket_names() + [PRODUCT_BASIS]
    return Calibration(group_quantiles(every_score, every_group, level), source, origin,
                       int(len(every_score)), level,
                       {label: int(size) for label, size in zip(labels, sizes)})


@dataclass(frozen=True)
class PoolingSummary:
    """What the pooling learned: for the metadata and the report."""

    parts: Dict[str, int]
    offsets: str
    catalogue_family: str
    log_offset_hours: float
    typical_power: float
    noise_variance: float
    between_variance: float
    week_levels: Tuple[float, ...]
    next_week_level: float
    week_model: Dict[str, Any]
    median_shift: float
    bound: Dict[str, Any]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready form."""
        return {
            "parts": dict(self.parts),
            "offsets": self.offsets,
            "catalogue_family": self.catalogue_family,
            "log_offset_hours": round(self.log_offset_hours, 6),
            "typical_power": round(self.typical_power, 6),
            "noise_variance": round(self.noise_variance, 6),
            "between_variance": round(self.between_variance, 6),
            "shrinkage_rows": round(self.noise_variance / self.between_variance, 6),
            "week_levels": [round(v, 6) for v in self.week_levels],
            "next_week_level": round(self.next_week_level, 6),
            "week_model": {k: round(v, 9) if isinstance(v, float) else v
                           for k, v in self.week_model.items()},
            "median_shift": round(self.median_shift, 6),
            "bound": self.bound,
        }


class PooledDispatchRegressor(DispatchRegressorBase):
    """Hours to dispatch for every part seen: its own curve when it has the rows, else pooled.

    ``X`` has ``product_code``, ``orders_placed`` and optionally ``tranche`` (0 = the newest
    tranche, 1, 2, ... older ones; absent: all newest). See the module docstring for the model.
    ``bases_`` says which curve each part got; ``predict`` answers a part never seen from the
    catalogue curve; ``to_dispatch_model`` exports format 3. ``offsets`` is ``"factor+power"``
    (a factor and a power on the catalogue curve per part) or ``"factor"`` (a factor).
    """

    reads_tranches = True

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
        catalogue_knots: int = DEFAULT_CATALOGUE_KNOTS,
        level_iterations: int = DEFAULT_LEVEL_ITERATIONS,
        offsets: str = FACTOR_AND_POWER,
        shift_iterations: int = DEFAULT_SHIFT_ITERATIONS,
        calibration_rows: int = DEFAULT_CALIBRATION_ROWS,
        calibration_weeks: int = DEFAULT_CALIBRATION_WEEKS,
    ) -> None:
        super().__init__(families, folds, min_rows_per_code, cv_max_rows, relative_tolerance,
                         rounding_tolerance, random_state, n_jobs, bound_level, dask_scheduler)
        self.catalogue_knots = catalogue_knots
        self.level_iterations = level_iterations
        self.offsets = offsets
        self.shift_iterations = shift_iterations
        self.calibration_rows = calibration_rows
        self.calibration_weeks = calibration_weeks

    def product_regressor(self) -> DispatchTimeRegressor:
        """The per-part estimator this one composes, with the same settings."""
        shared = DispatchTimeRegressor().get_params()
        return DispatchTimeRegressor(**{name: getattr(self, name) for name in shared})

    def fit(self, X: Any, y: Any) -> "PooledDispatchRegressor":
        """Fit the per-part curves, the catalogue curve, the parts, the weeks and the bound."""
        self.code_settings()
        if self.catalogue_knots < 3:
            raise ValueError("catalogue_knots must be at least 3")
        if self.offsets not in OFFSET_MODELS:
            raise ValueError(f"offsets must be one of {OFFSET_MODELS}, not {self.offsets!r}")
        if self.calibration_rows < 1 or self.calibration_weeks < 1:
            raise ValueError("calibration_rows and calibration_weeks must be at least 1")
        rows = self._rows(X, y, fitting=True)
        if not (rows.tranche == 0).any():
            raise ValueError("X has no row of the newest tranche (tranche 0)")
        if len(rows.orders) < self.folds:
            raise ValueError(f"n_samples = {len(rows.orders)}: the pooled model needs at least "
                             f"{self.folds} rows (folds), one part or many")
        fit = fit_pooled(rows, self, within_week=not has_later_weeks(rows, self))
        calibration = calibrate(rows, self, fit)
        self._export(fit, calibration, rows)
        return self

    def _export(self, fit: PooledFit, calibration: Calibration, rows: Rows) -> None:
        quantiles = calibration.quantiles
        knots = fit.knots
        factor = fit.week_factor()
        self.curves_: Dict[str, Curve] = {}
        self.bounds_: Dict[str, Curve] = {}
        self.bases_: Dict[str, str] = {}
        self.ranges_: Dict[str, Tuple[float, float]] = {}
        q_product = float(quantiles[PRODUCT_GROUP])
        ahead = (2.0 / np.pi) * fit.forecast_variance
        for code, (curve, bound, code_fit, _) in fit.product.items():
            estimate = Curve(curve.knots, tuple(factor * v for v in curve.values))
            at = np.asarray(bound.knots)
            here = estimate.predict(at)
            # The part's own margin (its conformal multiple of its spread), and next week's level
            # as unsure as the forecast says, in the same multiple of its spread in hours.
            margin = np.asarray(bound.values) * factor - here
            margin = np.sqrt(margin * margin + ahead * (code_fit.bound_quantile * here) ** 2)
            values = here + q_product * margin
            self.curves_[code] = estimate
            self.bounds_[code] = upper_bound_curve(estimate, at.tolist(), values.tolist())
            self.bases_[code] = PRODUCT_BASIS
            self.ranges_[code] = code_fit.orders_range
        knots_t = tuple(float(k) for k in knots)
        unseen = np.full(len(knots), -1)
        typical = fit.log_estimate(unseen, knots)
        self.catalogue_ = CatalogueCurve(
            Curve(knots_t, tuple(map(float, np.maximum(np.exp(typical) - fit.offset, 0.0)))),
            Curve(knots_t, tuple(map(float, np.maximum(
                np.exp(typical + quantiles[0] * fit.width(unseen, knots, ahead=True))
                - fit.offset, 0.0)))))
        pooled = np.flatnonzero((fit.rows > 0) & ~np.isin(
            np.asarray(fit.names, dtype=object), list(fit.product)))
        log_estimate = (fit.level[pooled, None] + fit.power[pooled, None] * fit.log_curve[None, :]
                        + fit.forecast + fit.median_shift)
        estimate = np.maximum(np.exp(log_estimate) - fit.offset, 0.0)
        spread = fit.spread[0] + fit.spread[1] * knots
        width = np.sqrt(spread[None, :] ** 2 + (2.0 / np.pi) * (
            fit.level_variance[pooled, None] + fit.forecast_variance))
        margin = quantiles[rows_bucket(fit.rows[pooled])][:, None] * width
        upper = np.maximum(np.exp(log_estimate + margin) - fit.offset, 0.0)
        low = np.full(len(fit.names), np.inf)
        high = np.full(len(fit.names), -np.inf)
        np.minimum.at(low, rows.part, rows.orders)
        np.maximum.at(high, rows.part, rows.orders)
        for p, e, u in zip(pooled.tolist(), estimate.tolist(), upper.tolist()):
            code = fit.names[p]
            self.curves_[code] = Curve(knots_t, tuple(e))
            self.bounds_[code] = Curve(knots_t, tuple(u))
            self.ranges_[code] = (float(low[p]), float(high[p]))
            self.bases_[code] = POOLED_BASIS
        self.fits_ = {code: fitted.fit for code, fitted in fit.product.items()}
        self.rows_: Dict[str, int] = {fit.names[p]: int(fit.rows[p])
                                      for p in np.flatnonzero(fit.rows > 0)}
        self.week_levels_ = np.exp(fit.levels)
        self.calibration_ = calibration
        labels = bucket_names()
        self.summary_ = PoolingSummary(
            parts={PRODUCT_BASIS: len(fit.product), POOLED_BASIS: int(len(pooled))},
            offsets=self.offsets, catalogue_family=fit.catalogue_family,
            log_offset_hours=fit.offset, typical_power=fit.prior[1],
            noise_variance=fit.noise, between_variance=fit.between,
            week_levels=tuple(float(v) for v in np.exp(fit.levels)),
            next_week_level=factor, week_model=fit.weeks, median_shift=fit.median_shift,
            bound={
                "calibrated_on": calibration.source, "weeks": calibration.weeks,
                "rows": calibration.rows, "level": calibration.level,
                "rows_by_group": calibration.group_rows,
                "quantile_by_rows": {labels[i]: round(float(quantiles[i]), 6)
                                     for i in range(len(labels))},
                "quantile_product": round(q_product, 6),
                "spread": [round(v, 6) for v in fit.spread],
            })

    def _curve_of(self, curves: Dict[str, Curve], code: str) -> Curve:
        """A part's own or pooled curve; a part never seen gets the catalogue curve's."""
        found = curves.get(code)
        if found is not None:
            return found
        return self.catalogue_.curve if curves is self.curves_ else self.catalogue_.bound

    def to_dispatch_model(self) -> DispatchModel:
        """The published model, format 3: every part's curve, bound, range and basis."""
        check_is_fitted(self)
        return DispatchModel(dict(self.curves_), dict(self.bounds_), dict(self.ranges_),
                             dict(self.bases_), self.catalogue_)

    def fit_result(self) -> FitResult:
        """The exported model with the per-part fits and what the pooling learned."""
        check_is_fitted(self)
        return FitResult(self.to_dispatch_model(), dict(self.fits_), {},
                         self.summary_.to_dict())


__all__ = ["CATALOGUE_BASIS", "PooledDispatchRegressor", "TRANCHE", "bucket_names",
           "rows_bucket"]
