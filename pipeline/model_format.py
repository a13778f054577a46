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

The format's rules are checked in one place, :func:`check_artefact`, over all codes at once
with numpy (a catalogue's artefact holds 100,000 curves): :meth:`DispatchModel.from_json`
and the service's parser (``pipeline.api.lookup``, which keeps the curves as these arrays)
both use it, so they refuse the same artefacts with the same messages. A model built in
code is held to the same rules between its parts (:meth:`DispatchModel.__post_init__`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import chain
from operator import methodcaller
from typing import (
    Any, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple,
)

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

NO_BASIS = -1

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
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
                raise _uncovered(name, sorted(set(self.curves) ^ set(part)))
        codes = self.product_codes
        if self.bounds:
            check_bounds(codes, Segments.of(self.curves[c] for c in codes),
                         Segments.of(self.bounds[c] for c in codes))
        if self.ranges:
            check_ranges(codes, np.array([self.ranges[c] for c in codes], dtype=np.float64))
        if self.bases:
            check_bases(codes, [self.bases[c] for c in codes])
        if self.catalogue is not None:
            check_catalogue(Segments.of([self.catalogue.curve]),
                            Segments.of([self.catalogue.bound]))

    @property
    def product_codes(self) -> Tuple[str, ...]:
        """The product codes the model can estimate, sorted."""
        return tuple(sorted(self.curves))

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
        """Estimates, p90 bounds (never below the estimate) and whether each row's order count
        is outside its code's trained range, for many rows (None: not in the model)."""
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
        checked = check_artefact(parsed)
        codes = checked.codes
        curves = dict(zip(codes, checked.curves.curves()))
        bounds = {} if checked.bounds is None else dict(zip(codes, checked.bounds.curves()))
        ranges: Dict[str, OrdersRange] = {} if checked.ranges is None else {
            code: (low, high) for code, (low, high) in zip(codes, checked.ranges.tolist())}
        bases = {} if checked.bases is None else {
            code: BASES[i] for code, i in zip(codes, checked.bases.tolist())}
        catalogue = None if checked.catalogue is None else CatalogueCurve(
            *checked.catalogue.curve.curves(), *checked.catalogue.bound.curves())
        return cls(curves, bounds, ranges, bases, catalogue)


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


# ---------------------------------------------------------------------------------------------
# The format's rules, checked once for every reader


class Segments(NamedTuple):
    """Piecewise-linear curves, one per code: code i's are ``knots[offsets[i]:offsets[i + 1]]``."""

    knots: FloatArray
    values: FloatArray
    offsets: IntArray

    @classmethod
    def of(cls, curves: Iterable[Curve]) -> "Segments":
        """Curves as segments, in the order given."""
        listed = list(curves)
        counts = np.fromiter((len(c.knots) for c in listed), dtype=np.int64, count=len(listed))
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        total = int(offsets[-1])
        knots = np.fromiter(chain.from_iterable(c.knots for c in listed), np.float64, total)
        values = np.fromiter(chain.from_iterable(c.values for c in listed), np.float64, total)
        return cls(knots, values, offsets)

    def curves(self) -> List[Curve]:
        """Each code's curve as a :class:`Curve`."""
        knots, values, ends = self.knots.tolist(), self.values.tolist(), self.offsets.tolist()
        return [Curve(tuple(knots[a:b]), tuple(values[a:b])) for a, b in zip(ends, ends[1:])]

    def evaluate(self, which: IntArray, orders: FloatArray) -> FloatArray:
        """Curve ``which[r]`` at ``orders[r]`` for every row r, floored at zero.

        A vectorised ``bisect_right`` within each row's curve, then the arithmetic of
        :meth:`Curve.predict` and of the service's one-answer path, so results are equal.
        """
        low = self.offsets[which]
        high = self.offsets[which + 1]
        left, right = low.copy(), high.copy()
        top = len(self.knots) - 1
        steps = int(np.diff(self.offsets).max(initial=1)).bit_length() + 1
        for _ in range(steps):
            open_ = left < right
            middle = (left + right) >> 1
            above = open_ & (self.knots[np.minimum(middle, top)] <= orders)
            left = np.where(above, middle + 1, left)
            right = np.where(open_ & ~above, middle, right)
        i = np.minimum(np.maximum(left - 1, low), high - 2)
        t0, v0 = self.knots[i], self.values[i]
        slope = (self.values[i + 1] - v0) / (self.knots[i + 1] - t0)
        result: FloatArray = np.maximum(v0 + slope * (orders - t0), 0.0)
        return result

    def end_slopes(self) -> FloatArray:
        """Each curve's slope beyond its last knot."""
        last = self.offsets[1:] - 1
        slopes: FloatArray = (self.values[last] - self.values[last - 1]) / (
            self.knots[last] - self.knots[last - 1]
        )
        return slopes


class CatalogueSegments(NamedTuple):
    """The catalogue-wide curve and its p90 bound, as one-curve segments."""

    curve: Segments
    bound: Segments


class CheckedArtefact(NamedTuple):
    """An artefact that meets every rule of the format, as arrays over its codes (sorted).

    ``bounds``, ``ranges`` (one ``[min, max]`` row per code) and ``bases`` (positions in
    :data:`BASES`) are None when the artefact has none; ``catalogue`` too.
    """

    format_version: int
    codes: List[str]
    curves: Segments
    bounds: Optional[Segments]
    ranges: Optional[FloatArray]
    bases: Optional[npt.NDArray[np.int8]]
    catalogue: Optional[CatalogueSegments]


def check_artefact(document: Any) -> CheckedArtefact:
    """A parsed artefact checked against every rule of the format, all codes at once.

    ModelFormatError names the first code (in sorted order) that breaks the first rule
    broken: an object of this format and version with curves; each curve an object with
    >= 2 knots and one value per knot, all finite numbers, knots strictly increasing,
    values non-negative and never falling; bounds, ranges and bases for every code or
    none; each bound never below its estimate; each range ``0 <= min <= max``; each
    basis one of :data:`BASES`; a catalogue curve with a bound never below it.
    """
    document = checked_document(document)
    raw: Dict[str, Any] = document["curves"]
    version: int = document["format_version"]
    codes = sorted(raw)
    specs = [raw[code] for code in codes]
    curves = _segments(codes, specs, "")
    bounds = ranges = bases = catalogue = None
    if version >= 2:
        bound_specs = _covering(codes, _field(specs, BOUND_KEY), "bounds")
        if bound_specs is not None:
            bounds = _segments(codes, bound_specs, f" {BOUND_KEY}")
            check_bounds(codes, curves, bounds)
        range_specs = _covering(codes, _field(specs, RANGE_KEY), "ranges")
        if range_specs is not None:
            ranges = _ranges(codes, range_specs)
    if version >= 3:
        basis_specs = _covering(codes, _field(specs, BASIS_KEY), "bases")
        if basis_specs is not None:
            bases = check_bases(codes, basis_specs)
        if document.get(CATALOGUE_KEY) is not None:
            catalogue = _catalogue(document[CATALOGUE_KEY])
    return CheckedArtefact(version, codes, curves, bounds, ranges, bases, catalogue)


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


def check_bounds(codes: Sequence[str], curves: Segments, bounds: Segments) -> None:
    """ModelFormatError unless each bound is >= its estimate at 0, every knot and beyond."""
    problem = bound_violations(curves, bounds)
    if problem is not None:
        i, text = problem
        raise ModelFormatError(f"p90 bound of {codes[i]!r} {text}")


def check_catalogue(curve: Segments, bound: Segments) -> None:
    """ModelFormatError unless the catalogue's bound is >= its curve everywhere."""
    problem = bound_violations(curve, bound)
    if problem is not None:
        raise ModelFormatError(f"p90 bound of the catalogue curve {problem[1]}")


def bound_violation(estimate: Curve, bound: Curve) -> Optional[str]:
    """Why ``bound`` is not >= ``estimate`` at every order count >= 0, or None when it is."""
    problem = bound_violations(Segments.of([estimate]), Segments.of([bound]))
    return None if problem is None else problem[1]


def bound_violations(curves: Segments, bounds: Segments) -> Optional[Tuple[int, str]]:
    """The first code (position) whose bound falls below its estimate and why, or None.

    Both are piecewise linear, so checking at 0, at every knot of either and the slope
    beyond the last knots covers every order count. A relative slack of
    ``BOUND_TOLERANCE`` absorbs rounding; serving takes the larger of the two anyway.
    """
    n = len(curves.offsets) - 1
    owners = np.arange(n)
    points = np.concatenate((np.zeros(n), curves.knots, bounds.knots))
    which = np.concatenate((
        owners,
        np.repeat(owners, np.diff(curves.offsets)),
        np.repeat(owners, np.diff(bounds.offsets)),
    ))
    keep = points >= 0.0
    points, which = points[keep], which[keep]
    with np.errstate(all="ignore"):
        low, high = curves.evaluate(which, points), bounds.evaluate(which, points)
        slack = BOUND_TOLERANCE * np.maximum(1.0, np.abs(low))
        below = ~(high >= low - slack)
        if below.any():
            row = np.flatnonzero(below)
            row = row[np.lexsort((points[row], which[row]))][0]
            return int(which[row]), (
                f"is below the estimate at orders_placed={points[row]:g} "
                f"({high[row]:g} < {low[row]:g})"
            )
        grows, needed = bounds.end_slopes(), curves.end_slopes()
        slow = ~(grows >= needed - BOUND_TOLERANCE * np.maximum(1.0, np.abs(needed)))
    if slow.any():
        i = int(np.flatnonzero(slow)[0])
        return i, (
            f"grows slower than the estimate beyond its last knot "
            f"({grows[i]:g} < {needed[i]:g})"
        )
    return None


def check_ranges(codes: Sequence[str], ranges: FloatArray) -> None:
    """ModelFormatError unless every row of ``ranges`` is finite with ``0 <= min <= max``."""
    low, high = ranges[:, 0], ranges[:, 1]
    bad = ~(np.isfinite(low) & np.isfinite(high) & (low >= 0.0) & (low <= high))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelFormatError(
            f"orders_placed range of {codes[i]!r} is not 0 <= min <= max: {ranges[i].tolist()}"
        )


def check_bases(codes: Sequence[str], specs: Sequence[Any]) -> npt.NDArray[np.int8]:
    """Each code's basis as its position in :data:`BASES`; ModelFormatError for any other."""
    positions = {basis: i for i, basis in enumerate(BASES)}
    found = [positions.get(spec, NO_BASIS) if type(spec) is str else NO_BASIS for spec in specs]
    index = np.array(found, dtype=np.int8)
    if (index == NO_BASIS).any():
        i = int(np.flatnonzero(index == NO_BASIS)[0])
        raise ModelFormatError(f"basis of {codes[i]!r} is {specs[i]!r}, not one of {list(BASES)}")
    return index


def _uncovered(name: str, missing: Sequence[str]) -> ModelFormatError:
    return ModelFormatError(
        f"{name} must cover every product code or none (differ in {list(missing[:5])})"
    )


def _field(specs: Sequence[Dict[str, Any]], key: str) -> List[Any]:
    """Each spec's value for ``key`` (None where absent)."""
    return list(map(methodcaller("get", key), specs))


def _covering(codes: Sequence[str], found: List[Any], name: str) -> Optional[List[Any]]:
    """The per-code values if every code has one, None if none has; else ModelFormatError."""
    absent = found.count(None)
    if absent == len(codes):
        return None
    if absent:
        raise _uncovered(name, [code for code, value in zip(codes, found) if value is None])
    return found


def _numbers(lists: Sequence[Any], total: int) -> FloatArray:
    """Every number of some lists in one column (an integer too large for a float is inf)."""
    try:
        with np.errstate(over="ignore"):
            return np.fromiter(chain.from_iterable(lists), np.float64, total)
    except OverflowError:
        return np.fromiter(map(_as_float, chain.from_iterable(lists)), np.float64, total)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _segments(codes: Sequence[str], specs: Sequence[Any], suffix: str) -> Segments:
    """Curves checked: objects with >= 2 finite knots, increasing, values rising from >= 0."""

    def first(bad: BoolArray, what: str) -> None:
        if bad.any():
            raise ModelFormatError(what.format(repr(codes[int(np.flatnonzero(bad)[0])] + suffix)))

    if set(map(type, specs)) != {dict}:
        first(np.array([type(spec) is not dict for spec in specs]), "curve for {} is not an object")
    knots, values = _field(specs, "knots"), _field(specs, "values")
    if set(map(type, knots)) | set(map(type, values)) != {list}:
        first(np.array([type(k) is not list or type(v) is not list
                        for k, v in zip(knots, values)]), "curve for {} lacks knots or values")
    counts = np.fromiter(map(len, knots), dtype=np.int64, count=len(knots))
    value_counts = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    first((counts < 2) | (counts != value_counts),
          "curve for {} needs >= 2 knots and one value per knot")
    offsets = np.concatenate(([0], np.cumsum(counts)))
    total = int(offsets[-1])
    by_code = offsets[:-1]

    def per_code(bad: BoolArray) -> BoolArray:
        flagged: BoolArray = np.add.reduceat(bad, by_code) > 0
        return flagged

    for lists in (knots, values):
        if not set(map(type, chain.from_iterable(lists))) <= {int, float}:
            kinds = np.fromiter((type(x) in (int, float) for x in chain.from_iterable(lists)),
                                np.bool_, total)
            first(per_code(~kinds), "curve for {} holds a value that is not a number")
    k_arr, v_arr = _numbers(knots, total), _numbers(values, total)
    first(per_code(~(np.isfinite(k_arr) & np.isfinite(v_arr))),
          "curve for {} holds a value that is not finite")
    within = np.ones(total, dtype=np.bool_)
    within[by_code] = False  # a curve's first knot has no predecessor in its curve
    step_k = np.concatenate(([0.0], np.diff(k_arr)))
    step_v = np.concatenate(([0.0], np.diff(v_arr)))
    first(per_code(within & ~(step_k > 0)), "knots of {} are not strictly increasing")
    first(per_code(within & (step_v < 0)) | (v_arr[by_code] < 0),
          "values of {} are negative or decreasing")
    return Segments(k_arr, v_arr, offsets.astype(np.int64))


def _ranges(codes: Sequence[str], specs: Sequence[Any]) -> FloatArray:
    shaped = set(map(type, specs)) == {list} and set(map(len, specs)) == {2}
    if not (shaped and set(map(type, chain.from_iterable(specs))) <= {int, float}):
        for code, spec in zip(codes, specs):
            if not (type(spec) is list and len(spec) == 2
                    and type(spec[0]) in (int, float) and type(spec[1]) in (int, float)):
                raise ModelFormatError(f"orders_placed range of {code!r} is not [min, max]")
    ranges = _numbers(specs, 2 * len(specs)).reshape(len(codes), 2)
    check_ranges(codes, ranges)
    return ranges


def _catalogue(spec: Any) -> CatalogueSegments:
    if type(spec) is not dict or spec.get(BOUND_KEY) is None:
        raise ModelFormatError("catalogue curve is not an object with a p90 bound")
    curve = _segments([CATALOGUE_BASIS], [spec], "")
    bound = _segments([CATALOGUE_BASIS], [spec[BOUND_KEY]], f" {BOUND_KEY}")
    check_catalogue(curve, bound)
    return CatalogueSegments(curve, bound)
