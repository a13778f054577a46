"""The published model: one monotone, non-negative curve per product code, stored as JSON.

This module is shared by training and serving and needs only numpy: a request's
``product_code`` selects a curve and its ``orders_placed`` is the point on it.
``pipeline.estimator`` (training only, scikit-learn) fits the curves and exports
them as a ``DispatchModel``. Whatever family a curve was fitted as, it is published
piecewise linear (knots and values, JSON): loading it executes no code and serving
it is a binary search.
"""
from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import numpy.typing as npt

FORMAT = "time-to-dispatch/monotone-piecewise-linear"
FORMAT_VERSION = 1

FloatArray = npt.NDArray[np.float64]


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

    def predict(self, product_codes: Sequence[str], orders_placed: npt.ArrayLike) -> FloatArray:
        """Estimates for many rows at once; KeyError names the first unknown code."""
        orders = np.asarray(orders_placed, dtype=np.float64)
        result = np.empty(len(orders), dtype=np.float64)
        unique, index = encode_codes(product_codes)
        for position, rows in rows_by_code(index, len(unique)):
            result[rows] = self.curves[unique[position]].predict(orders[rows])
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
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode()

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
