"""The p90 upper bound: split-conformal prediction, scaled by how the spread grows with the queue.

Training only. For one product code, the out-of-fold residuals of its chosen curve (each
row predicted by a fit that never saw it) calibrate the bound:

1. the spread ``s(x) = a + b * x``: a least-squares line through the absolute residuals against
   ``orders_placed`` with ``a, b >= 0`` (``LinearRegression(positive=True)``), its intercept
   floored so it is never zero (an isotonic spread was tried: it under-covers the quiet end,
   where its first block is biased low on a few hundred rows);
2. the conformal quantile ``q``: the ``ceil((n + 1) * level) / n`` empirical quantile of the
   normalised residuals ``r / s(x)``, at least 0;
3. the bound ``estimate(x) + q * s(x)``: never below the estimate, non-decreasing (both terms
   are) and piecewise linear on the estimate's knots, so it is stored as knots too.

Scaling by ``s(x)`` keeps the bound honest when busy days are less predictable than quiet
ones: a constant margin would over-cover the quiet end and under-cover the busy end.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LinearRegression

from pipeline.model_format import BOUND_QUANTILE, Curve, upper_bound_curve

FloatArray = npt.NDArray[np.float64]
# The spread's floor: a share of the mean absolute residual plus a share of the labels' scale,
# so residuals that vanish (noise-free rows) never divide by zero or blow the bound up.
SPREAD_FLOOR = 0.05
LABEL_SCALE_FLOOR = 1e-6


class ConformalBound(NamedTuple):
    """A code's p90 bound curve, its conformal multiplier and the rows that calibrated it."""

    curve: Curve
    quantile: float
    calibration_rows: int


def label_scale(hours: FloatArray) -> float:
    """The labels' scale (std + mean |y|, never 0) that tolerances and floors are relative to."""
    return float(np.std(hours) + np.mean(np.abs(hours))) + float(np.finfo(np.float64).tiny)


def conformal_quantile(scores: FloatArray, level: float) -> float:
    """The finite-sample split-conformal quantile of scores at a coverage level, at least 0."""
    n = len(scores)
    rank = min(math.ceil((n + 1) * level), n)
    return max(float(np.partition(scores, rank - 1)[rank - 1]), 0.0)


def conformal_bound(
    estimate: Curve,
    orders: FloatArray,
    hours: FloatArray,
    out_of_fold: FloatArray,
    level: float = BOUND_QUANTILE,
) -> ConformalBound:
    """The bound for one code from its rows and their out-of-fold estimates."""
    residuals = hours - out_of_fold
    floor = (SPREAD_FLOOR * float(np.mean(np.abs(residuals)))
             + LABEL_SCALE_FLOOR * label_scale(hours))
    line = LinearRegression(positive=True).fit(orders[:, None], np.abs(residuals))
    intercept, slope = max(float(line.intercept_), floor), float(line.coef_[0])

    def spread(x: FloatArray) -> FloatArray:
        result: FloatArray = intercept + slope * x
        return result

    quantile = conformal_quantile(residuals / spread(orders), level)
    knots = np.asarray(estimate.knots, dtype=np.float64)
    values = estimate.predict(knots) + quantile * spread(knots)
    curve = upper_bound_curve(estimate, knots.tolist(), values.tolist())
    return ConformalBound(curve, quantile, int(len(hours)))


def coverage(bound: Curve, orders: FloatArray, hours: FloatArray) -> float:
    """The share of rows dispatched within the bound."""
    return float(np.mean(hours <= bound.predict(orders))) if len(hours) else float("nan")
