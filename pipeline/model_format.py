"""The published model: one monotone, non-negative curve per product code, stored as JSON.

This module is shared by training and serving and needs only numpy: a request's
``product_code`` selects a curve and its ``orders_placed`` is the point on it.
``pipeline.training.estimator`` (training only, scikit-learn) fits the curves and exports
them as a ``DispatchModel``. Whatever family a curve was fitted as, it is published
piecewise linear (knots and values, JSON): loading it executes no code and serving
it is a binary search.

Format version 2 adds, per product code, an optional upper bound (``p90``: a second
piecewise-linear curve, within which 90% of dispatches fall) and the range of
``orders_placed`` the code was trained on. A model has bounds (and ranges) for
every code or for none; version 1 artefacts, which have neither, still load.
:func:`with_bounds` turns a model and its bound curves into a version 2 model, and
:func:`upper_bound_curve` makes raw bound values into a valid bound curve.

Format version 3 adds, per product code, the ``basis`` its curve rests on (``"product"``:
the part's own rows in the newest tranche; ``"pooled"``: its few rows combined with the
whole catalogue) and, once per model, the ``catalogue`` curve with a bound wide enough for
any part (answers for parts the model has never seen, when the service is asked to).
Again every code has a basis or none does; a model without either is written as version 2.
"""
from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

FORMAT = "time-to-dispatch/monotone-piecewise-linear"
FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
BOUND_QUANTILE = 0.9
BOUND_KEY = "p90"
RANGE_KEY = "orders_placed_range"
BASIS_KEY = "basis"
CATALOGUE_KEY = "catalogue"
PRODUCT_BASIS = "product"
POOLED_BASIS = "pooled"
CATALOGUE_BASIS = "catalogue"
BASES = (PRODUCT_BASIS, POOLED_BASIS)
BOUND_TOLERANCE = 1e-9

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
OrdersRange = Tuple[float, float]


class ModelFormatError(ValueError):
    """A model artefact is not a valid model of this format."""


def encode_codes(product_codes: Sequence[str]) -> Tuple[List[str], npt.NDArray[np.int64]]:
    """Distinct product codes in order of appearance, and each row's position among them."""
    lookup = {code: i for i, code in enumerate(dict.fromkeys(product_codes))}
    index = np.fromiter(
        map(lookup.__getitem__, product_codes), dtype=np.int64, count=len(product_codes)
    )
    return [str(code) for code in lookup], index


def rows_by_code(
    code_index: npt.NDArray[np.int64], codes: int
) -> Iterator[Tuple[int, npt.NDArray[np.intp]]]:
    """Each code's position with the row numbers holding it (codes without rows are left out)."""
    order = np.argsort(code_index, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(code_index, minlength=codes))))
    for position in range(codes):
        if bounds[position + 1] > bounds[position]:
            yield position, order[bounds[position]:bounds[position + 1]]


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


class CatalogueCurve(NamedTuple):
    """The catalogue-wide estimate and a p90 bound wide enough for any part."""

    curve: Curve
    bound: Curve


@dataclass(frozen=True)
class DispatchModel:
    """Curves by product code: the whole published model.

    ``bounds`` (the p90 upper bound per code), ``ranges`` (the trained
    ``orders_placed`` range per code) and ``bases`` (what each curve rests on, one of
    :data:`BASES`) are either empty or cover every code; a bound must never fall below
    its code's estimate (ModelFormatError otherwise). ``catalogue`` is the
    catalogue-wide curve and its bound, or None.
    """

    curves: Mapping[str, Curve]
    bounds: Mapping[str, Curve] = field(default_factory=dict)
    ranges: Mapping[str, OrdersRange] = field(default_factory=dict)
    bases: Mapping[str, str] = field(default_factory=dict)
    catalogue: Optional[CatalogueCurve] = None

    def __post_init__(self) -> None:
        parts: Tuple[Tuple[str, Mapping[str, Any]], ...] = (
            ("bounds", self.bounds), ("ranges", self.ranges), ("bases", self.bases)
        )
        for name, part in parts:
            if part and set(part) != set(self.curves):
                missing = sorted(set(self.curves) ^ set(part))
                raise ModelFormatError(
                    f"{name} must cover every product code or none (differ in {missing[:5]})"
                )
        for code, bound in self.bounds.items():
            problem = bound_violation(self.curves[code], bound)
            if problem:
                raise ModelFormatError(f"p90 bound of {code!r} {problem}")
        for code, (low, high) in self.ranges.items():
            if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
                raise ModelFormatError(
                    f"orders_placed range of {code!r} is not 0 <= min <= max: {[low, high]}"
                )
        for code, basis in self.bases.items():
            if basis not in BASES:
                raise ModelFormatError(f"basis of {code!r} is {basis!r}, not one of {list(BASES)}")
        if self.catalogue is not None:
            problem = bound_violation(self.catalogue.curve, self.catalogue.bound)
            if problem:
                raise ModelFormatError(f"p90 bound of the catalogue curve {problem}")

    @property
    def product_codes(self) -> Tuple[str, ...]:
        """The product codes the model can estimate, sorted."""
        return tuple(sorted(self.curves))

    def predict_one(self, product_code: str, orders_placed: float) -> float:
        """Estimated hours to dispatch for one product; KeyError for an unknown code."""
        return self.curves[product_code].predict_one(float(orders_placed))

    def upper_one(self, product_code: str, orders_placed: float) -> Optional[float]:
        """The p90 bound for one product (never below the estimate), None without bounds."""
        curve = self.curves[product_code]
        bound = self.bounds.get(product_code)
        if bound is None:
            return None
        orders = float(orders_placed)
        return max(bound.predict_one(orders), curve.predict_one(orders))

    def basis_one(self, product_code: str) -> Optional[str]:
        """What the code's curve rests on (one of BASES); None for a model without bases."""
        if product_code not in self.curves:
            raise KeyError(product_code)
        return self.bases.get(product_code)

    def extrapolated_one(self, product_code: str, orders_placed: float) -> Optional[bool]:
        """Whether the order count lies outside the code's trained range; None if unknown."""
        if product_code not in self.curves:
            raise KeyError(product_code)
        known = self.ranges.get(product_code)
        if known is None:
            return None
        return not known[0] <= orders_placed <= known[1]

    def predict(self, product_codes: Sequence[str], orders_placed: npt.ArrayLike) -> FloatArray:
        """Estimates for many rows at once; KeyError names the first unknown code."""
        orders = np.asarray(orders_placed, dtype=np.float64)
        result = np.empty(len(orders), dtype=np.float64)
        unique, index = encode_codes(product_codes)
        for position, rows in rows_by_code(index, len(unique)):
            result[rows] = self.curves[unique[position]].predict(orders[rows])
        return result

    def predict_bounded(
        self, product_codes: Sequence[str], orders_placed: npt.ArrayLike
    ) -> Tuple[FloatArray, Optional[FloatArray], Optional[BoolArray]]:
        """Estimates, p90 bounds and extrapolated flags for many rows (None: not in the model).

        Equal, row for row, to predict_one, upper_one and extrapolated_one.
        """
        orders = np.asarray(orders_placed, dtype=np.float64)
        n = len(orders)
        estimate = np.empty(n, dtype=np.float64)
        upper = np.empty(n, dtype=np.float64) if self.bounds else None
        outside = np.empty(n, dtype=np.bool_) if self.ranges else None
        unique, index = encode_codes(product_codes)
        for position, rows in rows_by_code(index, len(unique)):
            code = unique[position]
            x = orders[rows]
            estimate[rows] = here = self.curves[code].predict(x)
            if upper is not None:
                upper[rows] = np.maximum(self.bounds[code].predict(x), here)
            if outside is not None:
                low, high = self.ranges[code]
                outside[rows] = (x < low) | (x > high)
        return estimate, upper, outside

    def to_json(self) -> bytes:
        """The artefact: canonical JSON, so equal models give equal bytes and checksums."""
        curves: Dict[str, Dict[str, Any]] = {}
        for code, curve in sorted(self.curves.items()):
            spec = _curve_spec(curve)
            bound = self.bounds.get(code)
            if bound is not None:
                spec[BOUND_KEY] = _curve_spec(bound)
            if code in self.ranges:
                spec[RANGE_KEY] = list(self.ranges[code])
            if code in self.bases:
                spec[BASIS_KEY] = self.bases[code]
            curves[code] = spec
        document: Dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if self.bases or self.catalogue else 2,
            "feature": "orders_placed",
            "target": "hours_to_dispatch",
            "curves": curves,
        }
        if self.catalogue is not None:
            document[CATALOGUE_KEY] = {
                **_curve_spec(self.catalogue.curve), BOUND_KEY: _curve_spec(self.catalogue.bound)
            }
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "DispatchModel":
        """Parse and check an artefact; ModelFormatError says what is wrong with it."""
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"model artefact is not JSON: {exc}") from exc
        document = checked_document(parsed)
        version = document["format_version"]
        raw = document["curves"]
        curves = {str(code): _parse_curve(str(code), spec) for code, spec in raw.items()}
        bounds: Dict[str, Curve] = {}
        ranges: Dict[str, OrdersRange] = {}
        if version >= 2:
            for code, spec in raw.items():
                if spec.get(BOUND_KEY) is not None:
                    bounds[str(code)] = _parse_curve(f"{code} {BOUND_KEY}", spec[BOUND_KEY])
                if spec.get(RANGE_KEY) is not None:
                    ranges[str(code)] = _parse_range(str(code), spec[RANGE_KEY])
        bases: Dict[str, str] = {}
        catalogue: Optional[CatalogueCurve] = None
        if version >= 3:
            for code, spec in raw.items():
                if spec.get(BASIS_KEY) is not None:
                    bases[str(code)] = _parse_basis(str(code), spec[BASIS_KEY])
            if document.get(CATALOGUE_KEY) is not None:
                catalogue = _parse_catalogue(document[CATALOGUE_KEY])
        return cls(curves, bounds, ranges, bases, catalogue)


def checked_document(document: Any) -> Dict[str, Any]:
    """A parsed artefact whose format, version and curves object are as this module reads."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFormatError(f"model artefact is not of format {FORMAT!r}")
    version = document.get("format_version")
    if type(version) is not int or version not in READABLE_FORMAT_VERSIONS:
        raise ModelFormatError(
            f"model format version {version!r} is not one of {list(READABLE_FORMAT_VERSIONS)}"
        )
    raw = document.get("curves")
    if not isinstance(raw, dict) or not raw:
        raise ModelFormatError("model artefact has no curves")
    return document


def bound_violation(estimate: Curve, bound: Curve) -> Optional[str]:
    """Why ``bound`` is not >= ``estimate`` at every order count >= 0, or None when it is.

    Both are piecewise linear, so checking at 0, at every knot of either and the slope
    beyond the last knot covers every order count. A relative slack of
    ``BOUND_TOLERANCE`` absorbs rounding; serving takes the larger of the two anyway.
    """
    points = np.unique(np.concatenate(([0.0], estimate.knots, bound.knots)))
    points = points[points >= 0.0]
    with np.errstate(all="ignore"):
        low, high = estimate.predict(points), bound.predict(points)
    slack = BOUND_TOLERANCE * np.maximum(1.0, np.abs(low))
    below = np.flatnonzero(~(high >= low - slack))
    if len(below):
        i = below[0]
        return f"is below the estimate at orders_placed={points[i]:g} ({high[i]:g} < {low[i]:g})"
    grows, needed = _end_slope(bound), _end_slope(estimate)
    if not grows >= needed - BOUND_TOLERANCE * max(1.0, abs(needed)):
        return f"grows slower than the estimate beyond its last knot ({grows:g} < {needed:g})"
    return None


def _curve_spec(curve: Curve) -> Dict[str, Any]:
    return {"knots": list(curve.knots), "values": list(curve.values)}


def _end_slope(curve: Curve) -> float:
    knots, values = curve.knots, curve.values
    return (values[-1] - values[-2]) / (knots[-1] - knots[-2])


def upper_bound_curve(
    estimate: Curve, knots: Sequence[float], values: Sequence[float]
) -> Curve:
    """A valid p90 bound from raw bound values at some order counts (e.g. a quantile fit).

    The result interpolates the raw values (extended along their end segments) at the
    union of both knot sets and 0, lifts them to at least the estimate, makes them
    non-decreasing, and adds a last knot so the bound grows at least as fast as the
    estimate beyond every knot. Raw values must be finite.
    """
    raw = np.asarray(values, dtype=np.float64)
    at = np.asarray(knots, dtype=np.float64)
    if len(at) < 2 or len(at) != len(raw) or not (np.isfinite(raw).all() and np.isfinite(at).all()):
        raise ValueError("a bound needs >= 2 finite knots and one finite value per knot")
    order = np.argsort(at, kind="stable")
    at, raw = at[order], raw[order]
    if np.any(np.diff(at) <= 0):
        raise ValueError("bound knots must be distinct")
    grid = np.unique(np.concatenate(([0.0], estimate.knots, at)))
    grid = grid[grid >= 0.0]
    i = np.clip(np.searchsorted(at, grid, side="right") - 1, 0, len(at) - 2)
    with np.errstate(all="ignore"):
        slope = (raw[i + 1] - raw[i]) / (at[i + 1] - at[i])
        lifted = np.maximum(raw[i] + slope * (grid - at[i]), estimate.predict(grid))
    lifted = np.maximum.accumulate(np.maximum(lifted, 0.0))
    knots_out, values_out = list(map(float, grid)), list(map(float, lifted))
    if len(knots_out) == 1:
        knots_out.append(knots_out[0] + 1.0)
        values_out.append(values_out[0])
    with np.errstate(all="ignore"):
        needed = max(_end_slope(estimate), 0.0)
        span = max(knots_out[-1] - knots_out[0], 1.0)
        last_slope = (values_out[-1] - values_out[-2]) / (knots_out[-1] - knots_out[-2])
    if last_slope < needed:
        knots_out.append(knots_out[-1] + span)
        values_out.append(values_out[-1] + needed * span)
    if not all(map(math.isfinite, values_out)):
        raise ValueError("the estimate is too steep for a finite bound")
    return Curve(tuple(knots_out), tuple(values_out))


def with_bounds(
    model: DispatchModel,
    bounds: Mapping[str, Curve],
    ranges: Mapping[str, OrdersRange],
) -> DispatchModel:
    """The version 2 model: ``model``'s curves with a p90 bound and trained range per code.

    ModelFormatError if a code lacks either or a bound falls below its estimate
    (build bounds with :func:`upper_bound_curve` to avoid that).
    """
    return DispatchModel(
        dict(model.curves),
        dict(bounds),
        {code: (float(low), float(high)) for code, (low, high) in ranges.items()},
        dict(model.bases),
        model.catalogue,
    )


def trained_ranges(
    product_codes: Sequence[str], orders_placed: npt.ArrayLike
) -> Dict[str, OrdersRange]:
    """The smallest and largest ``orders_placed`` per product code in some rows."""
    orders = np.asarray(orders_placed, dtype=np.float64)
    names, index = encode_codes(product_codes)
    return {
        names[position]: (float(orders[rows].min()), float(orders[rows].max()))
        for position, rows in rows_by_code(index, len(names))
    }


def _parse_range(code: str, spec: Any) -> OrdersRange:
    if not (isinstance(spec, list) and len(spec) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec
    )):
        raise ModelFormatError(f"orders_placed range of {code!r} is not [min, max]")
    try:
        return float(spec[0]), float(spec[1])
    except OverflowError as exc:
        raise ModelFormatError(f"orders_placed range of {code!r} is not finite") from exc


def _parse_basis(code: str, spec: Any) -> str:
    if spec not in BASES:
        raise ModelFormatError(f"basis of {code!r} is {spec!r}, not one of {list(BASES)}")
    return str(spec)


def _parse_catalogue(spec: Any) -> CatalogueCurve:
    if not isinstance(spec, dict) or spec.get(BOUND_KEY) is None:
        raise ModelFormatError("catalogue curve is not an object with a p90 bound")
    bound = _parse_curve(f"{CATALOGUE_BASIS} {BOUND_KEY}", spec[BOUND_KEY])
    return CatalogueCurve(_parse_curve(CATALOGUE_BASIS, spec), bound)


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
