"""The model: one monotone, non-negative piecewise-linear curve per product code.

This module is the feature encoding shared by training and serving: a request's
``product_code`` selects a curve and its ``orders_placed`` is the point on it.
The curve family (how many linear segments) is chosen per product code by
k-fold cross-validation, fitted by bounded least squares so that every segment
slope is >= 0 (predictions never fall as orders grow) and the curve starts at
>= 0. The artefact is plain JSON: loading it executes no code.
"""
from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np
import numpy.typing as npt

FORMAT = "time-to-dispatch/monotone-piecewise-linear"
FORMAT_VERSION = 1
DEFAULT_SEGMENT_CANDIDATES: Tuple[int, ...] = (1, 2, 4, 8)
DEFAULT_FOLDS = 5
DEFAULT_MIN_ROWS_PER_CODE = 30
DEFAULT_CV_MAX_ROWS = 20_000

FloatArray = npt.NDArray[np.float64]


class ModelFormatError(ValueError):
    """A model artefact is not a valid model of this format."""


@dataclass(frozen=True)
class Curve:
    """A non-decreasing piecewise-linear function, extrapolated along its end segments."""

    knots: Tuple[float, ...]
    values: Tuple[float, ...]

    def predict(self, orders: FloatArray) -> FloatArray:
        """Estimated hours for an array of order counts, floored at zero."""
        knots = np.asarray(self.knots)
        values = np.asarray(self.values)
        i = np.clip(np.searchsorted(knots, orders, side="right") - 1, 0, len(knots) - 2)
        slope = (values[i + 1] - values[i]) / (knots[i + 1] - knots[i])
        result: FloatArray = np.maximum(values[i] + slope * (orders - knots[i]), 0.0)
        return result

    def predict_one(self, orders: float) -> float:
        """The estimate for one order count, in pure Python for the serving hot path."""
        knots, values = self.knots, self.values
        i = min(max(bisect_right(knots, orders) - 1, 0), len(knots) - 2)
        t0, v0 = knots[i], values[i]
        slope = (values[i + 1] - v0) / (knots[i + 1] - t0)
        return max(v0 + slope * (orders - t0), 0.0)


@dataclass(frozen=True)
class DispatchModel:
    """Curves by product code: the whole published model."""

    curves: Mapping[str, Curve]

    @property
    def product_codes(self) -> Tuple[str, ...]:
        """The product codes the model can estimate, sorted."""
        return tuple(sorted(self.curves))

    def predict_one(self, product_code: str, orders_placed: float) -> float:
        """Estimated hours to dispatch for one product; KeyError for an unknown code."""
        return self.curves[product_code].predict_one(float(orders_placed))

    def predict(self, product_codes: Sequence[str], orders_placed: Sequence[float]) -> FloatArray:
        """Estimates for many rows at once; KeyError names the first unknown code."""
        codes = np.asarray(product_codes, dtype=object)
        orders = np.asarray(orders_placed, dtype=np.float64)
        result = np.empty(len(orders), dtype=np.float64)
        unique, inverse = np.unique(codes, return_inverse=True)
        for index, code in enumerate(unique):
            rows = inverse == index
            result[rows] = self.curves[str(code)].predict(orders[rows])
        return result

    def to_json(self) -> bytes:
        """The artefact: canonical JSON, so equal models give equal bytes and checksums."""
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "feature": "orders_placed",
            "target": "hours_to_dispatch",
            "curves": {
                code: {"knots": list(curve.knots), "values": list(curve.values)}
                for code, curve in sorted(self.curves.items())
            },
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "DispatchModel":
        """Parse and check an artefact; ModelFormatError says what is wrong with it."""
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"model artefact is not JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ModelFormatError(f"model artefact is not of format {FORMAT!r}")
        if document.get("format_version") != FORMAT_VERSION:
            raise ModelFormatError(
                f"model format version {document.get('format_version')!r} is not {FORMAT_VERSION}"
            )
        raw = document.get("curves")
        if not isinstance(raw, dict) or not raw:
            raise ModelFormatError("model artefact has no curves")
        return cls({str(code): _parse_curve(str(code), spec) for code, spec in raw.items()})


def _parse_curve(code: str, spec: Any) -> Curve:
    if not isinstance(spec, dict):
        raise ModelFormatError(f"curve for {code!r} is not an object")
    knots, values = spec.get("knots"), spec.get("values")
    if not isinstance(knots, list) or not isinstance(values, list):
        raise ModelFormatError(f"curve for {code!r} lacks knots or values")
    if len(knots) < 2 or len(knots) != len(values):
        raise ModelFormatError(f"curve for {code!r} needs >= 2 knots and one value per knot")
    numbers = knots + values
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        raise ModelFormatError(f"curve for {code!r} holds a value that is not a number")
    if not all(math.isfinite(v) for v in numbers):
        raise ModelFormatError(f"curve for {code!r} holds a value that is not finite")
    if any(b <= a for a, b in zip(knots, knots[1:])):
        raise ModelFormatError(f"knots of {code!r} are not strictly increasing")
    if any(b < a for a, b in zip(values, values[1:])) or values[0] < 0:
        raise ModelFormatError(f"values of {code!r} are negative or decreasing")
    return Curve(tuple(float(k) for k in knots), tuple(float(v) for v in values))


@dataclass(frozen=True)
class CodeFit:
    """How one product code was fitted: rows, segments chosen and their CV errors."""

    rows: int
    segments: int
    cv_mae: Dict[int, float]


@dataclass(frozen=True)
class FitResult:
    """A fitted model, the choice made per code, and the codes too rare to learn."""

    model: DispatchModel
    fits: Dict[str, CodeFit]
    skipped: Dict[str, int] = field(default_factory=dict)


def _knots(orders: FloatArray, segments: int) -> FloatArray:
    knots: FloatArray = np.unique(np.quantile(orders, np.linspace(0.0, 1.0, segments + 1)))
    return knots


def _fit_curve(orders: FloatArray, hours: FloatArray, segments: int) -> Curve:
    """Bounded least squares: value at the first knot >= 0, every segment slope >= 0."""
    from scipy.optimize import lsq_linear

    knots = _knots(orders, segments)
    if len(knots) < 2:
        level = max(float(np.mean(hours)), 0.0)
        return Curve((float(knots[0]), float(knots[0]) + 1.0), (level, level))
    widths = np.diff(knots)
    design = np.empty((len(orders), len(knots) + 1), dtype=np.float64)
    design[:, 0] = 1.0
    design[:, 1:-1] = np.clip(orders[:, None] - knots[None, :-1], 0.0, widths[None, :])
    design[:, -1] = hours
    # R of the QR of [A | y] holds the whole least-squares problem in (k+2)^2 numbers.
    r = np.linalg.qr(design, mode="r")
    p = len(knots)
    solution = lsq_linear(r[:p, :p], r[:p, p], bounds=(0.0, np.inf), method="bvls")
    rises = solution.x[1:] * widths
    values = solution.x[0] + np.concatenate(([0.0], np.cumsum(rises)))
    return Curve(tuple(float(k) for k in knots), tuple(float(v) for v in np.maximum.accumulate(values)))


def _cv_mae(
    orders: FloatArray, hours: FloatArray, segments: int, folds: int, fold_of: npt.NDArray[np.int64]
) -> float:
    errors = np.empty(len(orders))
    for fold in range(folds):
        held = fold_of == fold
        curve = _fit_curve(orders[~held], hours[~held], segments)
        errors[held] = np.abs(curve.predict(orders[held]) - hours[held])
    return float(np.mean(errors))


def fit_code(
    orders: FloatArray,
    hours: FloatArray,
    candidates: Sequence[int] = DEFAULT_SEGMENT_CANDIDATES,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    cv_max_rows: int = DEFAULT_CV_MAX_ROWS,
) -> Tuple[Curve, CodeFit]:
    """Choose the number of segments by k-fold CV on MAE, then fit on all rows."""
    rng = np.random.default_rng(seed)
    sample = rng.permutation(len(orders))[:cv_max_rows]
    cv_orders, cv_hours = orders[sample], hours[sample]
    fold_of = np.arange(len(sample)) % folds
    scores = {k: _cv_mae(cv_orders, cv_hours, k, folds, fold_of) for k in sorted(candidates)}
    best = min(scores, key=lambda k: (scores[k], k))
    return _fit_curve(orders, hours, best), CodeFit(len(orders), best, scores)


def fit_model(
    product_codes: Sequence[str],
    orders_placed: FloatArray,
    hours_to_dispatch: FloatArray,
    candidates: Sequence[int] = DEFAULT_SEGMENT_CANDIDATES,
    folds: int = DEFAULT_FOLDS,
    min_rows_per_code: int = DEFAULT_MIN_ROWS_PER_CODE,
    seed: int = 0,
    cv_max_rows: int = DEFAULT_CV_MAX_ROWS,
) -> FitResult:
    """Fit one curve per product code with enough rows; rarer codes are skipped and reported."""
    codes = np.asarray(product_codes, dtype=object)
    orders = np.asarray(orders_placed, dtype=np.float64)
    hours = np.asarray(hours_to_dispatch, dtype=np.float64)
    unique, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(counts)))
    curves: Dict[str, Curve] = {}
    fits: Dict[str, CodeFit] = {}
    skipped: Dict[str, int] = {}
    for index, code in enumerate(unique):
        rows = order[bounds[index]:bounds[index + 1]]
        if len(rows) < min_rows_per_code:
            skipped[str(code)] = int(len(rows))
            continue
        curve, fit = fit_code(orders[rows], hours[rows], candidates, folds, seed, cv_max_rows)
        curves[str(code)] = curve
        fits[str(code)] = fit
    return FitResult(DispatchModel(curves), fits, skipped)

