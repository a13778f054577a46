"""Drift of a tranche against the previous one: the population stability index per feature.

PSI = sum over bins of (actual - expected) * ln(actual / expected), with shares
floored at a small epsilon so empty bins stay finite. Numeric features are binned
at the previous tranche's quantiles (open-ended at both ends); product_code by
each code's share. Drift is reported, never used to block a run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import numpy.typing as npt

from pipeline.metadata import Drift
from pipeline.training.validation import CODE, HOURS, ORDERS, ValidTranche

DEFAULT_DRIFT_THRESHOLD = 0.2
DEFAULT_BINS = 10
EPSILON = 1e-4

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FeatureDrift:
    """The PSI of one feature and whether it is above the threshold."""

    feature: str
    psi: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    """Drift of every feature against the previous tranche (or why it was not computed)."""

    previous_key: Optional[str]
    threshold: float
    features: Tuple[FeatureDrift, ...] = ()
    note: str = ""

    @property
    def drifted(self) -> Tuple[str, ...]:
        """The features whose PSI is above the threshold."""
        return tuple(f.feature for f in self.features if f.drifted)

    def to_metadata(self) -> Drift:
        """As the metadata records it."""
        return Drift(previous_tranche=self.previous_key, threshold=self.threshold,
                     psi={f.feature: round(f.psi, 6) for f in self.features},
                     drifted=list(self.drifted), note=self.note)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready form, as in the metadata."""
        return self.to_metadata().to_data()


def _psi(expected: FloatArray, actual: FloatArray) -> float:
    e = np.maximum(expected / max(float(expected.sum()), 1.0), EPSILON)
    a = np.maximum(actual / max(float(actual.sum()), 1.0), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_psi(expected: FloatArray, actual: FloatArray, bins: int = DEFAULT_BINS) -> float:
    """PSI of a numeric feature, binned at the expected (previous) sample's quantiles."""
    if len(expected) == 0 or len(actual) == 0:
        return 0.0
    edges = np.unique(np.quantile(expected, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    counts_e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1)
    counts_a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1)
    return _psi(counts_e.astype(np.float64), counts_a.astype(np.float64))


def category_psi(expected: Mapping[str, int], actual: Mapping[str, int]) -> float:
    """PSI of a categorical feature from counts per category (new categories included)."""
    categories = sorted(set(expected) | set(actual))
    e = np.array([expected.get(c, 0) for c in categories], dtype=np.float64)
    a = np.array([actual.get(c, 0) for c in categories], dtype=np.float64)
    return _psi(e, a) if len(categories) else 0.0


def summarise_drift(
    previous_key: str,
    psi_by_feature: Mapping[str, float],
    threshold: float = DEFAULT_DRIFT_THRESHOLD,
) -> DriftSummary:
    """Mark each feature drifted when its PSI is above the threshold (at it is not drift)."""
    features = tuple(
        FeatureDrift(name, value, value > threshold) for name, value in psi_by_feature.items()
    )
    return DriftSummary(previous_key, threshold, features)


def tranche_drift(
    previous: ValidTranche,
    current: ValidTranche,
    previous_key: str,
    threshold: float = DEFAULT_DRIFT_THRESHOLD,
    bins: int = DEFAULT_BINS,
) -> DriftSummary:
    """PSI of all three columns of the current tranche against the previous one."""
    psi = {
        ORDERS: numeric_psi(previous.orders_placed, current.orders_placed, bins),
        HOURS: numeric_psi(previous.hours_to_dispatch, current.hours_to_dispatch, bins),
        CODE: category_psi(previous.rows_by_code(), current.rows_by_code()),
    }
    return summarise_drift(previous_key, psi, threshold)
