"""The gates a model passes before publishing: metrics, logic checks, champion vs challenger.

Each gate returns a small named :class:`Decision` (pass, warn, fail, or keep for
the champion gate) with a sentence in plain words, for the log and the metadata.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import numpy.typing as npt
from scipy.stats import binomtest
from sklearn.metrics import mean_absolute_error, r2_score

from pipeline.metadata import ByCode, Gate, HeldOut, Scores
from pipeline.model_format import BASES, DispatchModel, rows_by_code
from pipeline.training.listing import some
from pipeline.training.validation import ValidTranche

PASS, WARN, FAIL, KEEP = "pass", "warn", "fail", "keep"
DEFAULT_R2_MIN = 0.5
DEFAULT_R2_WARN = 0.8
DEFAULT_MAE_MAX = 2.0
DEFAULT_MAE_WARN = 1.0
DEFAULT_GRID_POINTS = 200
DEFAULT_GRID_EXTEND = 0.5
DEFAULT_LABEL_FACTOR = 1.5
DEFAULT_CHAMPION_TOLERANCE = 0.05
DEFAULT_COVERAGE_MIN = 0.85
DEFAULT_MIN_BASIS_ROWS = 30
_MONOTONE_SLACK = 1e-9

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Decision:
    """One gate's outcome, the value it judged (if any) and why, in plain words."""

    gate: str
    outcome: str
    detail: str
    value: Optional[float] = None

    def to_metadata(self) -> Gate:
        """As the metadata records it."""
        return Gate(gate=self.gate, outcome=self.outcome, detail=self.detail, value=self.value)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready form, as in the metadata."""
        return self.to_metadata().to_data()


@dataclass(frozen=True)
class Metrics:
    """MAE and R² of predictions over some rows, and the share within the p90 bound."""

    rows: int
    mae: float
    r2: float
    coverage_p90: Optional[float] = None

    def to_metadata(self) -> Scores:
        """As the metadata records it (``coverage_p90`` only for a model with a bound)."""
        mae, r2 = round(self.mae, 6), round(self.r2, 6)
        if self.coverage_p90 is None:
            return Scores(rows=self.rows, mae=mae, r2=r2)
        return Scores(rows=self.rows, mae=mae, r2=r2, coverage_p90=round(self.coverage_p90, 6))


@dataclass(frozen=True)
class Evaluation:
    """Metrics overall, per product code and (for a model with bases) per basis; rows of codes
    the model does not know are unscored."""

    overall: Metrics
    per_code: Dict[str, Metrics]
    unscored_rows: int
    by_basis: Dict[str, Metrics] = field(default_factory=dict)

    def to_metadata(self) -> HeldOut:
        """As the metadata records it (``by_basis`` only for a model with bases)."""
        overall = self.overall.to_metadata()
        per_code = ByCode(Scores, {c: m.to_metadata() for c, m in sorted(self.per_code.items())})
        if not self.by_basis:
            return HeldOut(overall=overall, per_product_code=per_code,
                           unscored_rows=self.unscored_rows)
        return HeldOut(overall=overall, per_product_code=per_code, unscored_rows=self.unscored_rows,
                       by_basis={b: _scored(m) for b, m in self.by_basis.items()})

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready form, as in the metadata."""
        return self.to_metadata().to_data()


def _scored(measured: Metrics) -> Scores:
    """``measured`` as recorded; a basis without rows has null scores: nothing was measured."""
    if measured.rows:
        return measured.to_metadata()
    if measured.coverage_p90 is None:
        return Scores(rows=0, mae=None, r2=None)
    return Scores(rows=0, mae=None, r2=None, coverage_p90=None)


def metrics(
    actual: FloatArray, predicted: FloatArray, upper: Optional[FloatArray] = None
) -> Metrics:
    """MAE and R² (scikit-learn's; 0 for no rows), and the share of rows within ``upper``."""
    if len(actual) == 0:
        return Metrics(0, 0.0, 0.0, None if upper is None else 0.0)
    coverage = None if upper is None else float(np.mean(actual <= upper))
    # R² is undefined on one row (scikit-learn answers NaN): score it as constant labels.
    r2 = float(r2_score(actual, predicted)) if len(actual) > 1 else float(
        np.all(actual == predicted))
    return Metrics(int(len(actual)), float(mean_absolute_error(actual, predicted)), r2, coverage)


@dataclass(frozen=True)
class MetricThresholds:
    """Error and warning levels: R² must not fall below, MAE (hours) must not rise above."""

    r2_min: float = DEFAULT_R2_MIN
    r2_warn: float = DEFAULT_R2_WARN
    mae_max: float = DEFAULT_MAE_MAX
    mae_warn: float = DEFAULT_MAE_WARN
    coverage_min: float = DEFAULT_COVERAGE_MIN


def predict_known(
    model: DispatchModel, rows: ValidTranche
) -> Tuple[npt.NDArray[np.bool_], FloatArray, Optional[FloatArray]]:
    """Which rows have a code the model knows, and its estimates and bounds for those rows."""
    known = np.zeros(rows.rows, dtype=bool)
    predictions = np.full(rows.rows, np.nan)
    upper = np.full(rows.rows, np.nan) if model.bounds else None
    for index, mask in rows_by_code(rows.code_index, len(rows.product_codes)):
        curve = model.curves.get(rows.product_codes[index])
        if curve is None:
            continue
        known[mask] = True
        predictions[mask] = curve.predict(rows.orders_placed[mask])
        if upper is not None:
            upper[mask] = model.bounds[rows.product_codes[index]].predict(rows.orders_placed[mask])
    return known, predictions[known], None if upper is None else upper[known]


def evaluate(model: DispatchModel, rows: ValidTranche) -> Evaluation:
    """Metrics of a model on some rows, overall, per product code it knows and per basis."""
    known, predictions, upper = predict_known(model, rows)
    actual = rows.hours_to_dispatch[known]
    codes = rows.code_index[known]
    per_code = {}
    for index, mask in rows_by_code(codes, len(rows.product_codes)):
        per_code[rows.product_codes[index]] = metrics(
            actual[mask], predictions[mask], None if upper is None else upper[mask])
    by_basis: Dict[str, Metrics] = {}
    if model.bases:
        basis_of = np.asarray([model.bases.get(c, "") for c in rows.product_codes] or [""])
        row_basis = basis_of[codes]
        for basis in BASES:
            mask = row_basis == basis
            by_basis[basis] = metrics(actual[mask], predictions[mask],
                                      None if upper is None else upper[mask])
    return Evaluation(metrics(actual, predictions, upper), per_code,
                      int(rows.rows - known.sum()), by_basis)


def metric_gates(held_out: Metrics, thresholds: MetricThresholds) -> Tuple[Decision, ...]:
    """R² and MAE on the held-out rows against their levels; the p90 bound's coverage too."""
    r2, mae = held_out.r2, held_out.mae
    if held_out.rows == 0:
        nothing = "no held-out rows of a product code the model knows"
        return Decision("r2", FAIL, nothing), Decision("mae", FAIL, nothing)
    if r2 < thresholds.r2_min:
        r2_decision = Decision("r2", FAIL, f"held-out R² {r2:.4f} is below the minimum "
                               f"{thresholds.r2_min:g}", r2)
    elif r2 < thresholds.r2_warn:
        r2_decision = Decision("r2", WARN, f"held-out R² {r2:.4f} is below the warning level "
                               f"{thresholds.r2_warn:g}", r2)
    else:
        r2_decision = Decision("r2", PASS, f"held-out R² {r2:.4f} (warning below "
                               f"{thresholds.r2_warn:g})", r2)
    if mae > thresholds.mae_max:
        mae_decision = Decision("mae", FAIL, f"held-out MAE {mae:.4f} h is above the maximum "
                                f"{thresholds.mae_max:g} h", mae)
    elif mae > thresholds.mae_warn:
        mae_decision = Decision("mae", WARN, f"held-out MAE {mae:.4f} h is above the warning "
                                f"level {thresholds.mae_warn:g} h", mae)
    else:
        mae_decision = Decision("mae", PASS, f"held-out MAE {mae:.4f} h (warning above "
                                f"{thresholds.mae_warn:g} h)", mae)
    return (r2_decision, mae_decision) + coverage_gate(held_out, thresholds)


def coverage_upper_limit(covered: int, rows: int) -> float:
    """The one-sided 95% upper confidence limit of a coverage measured on some rows (Wilson)."""
    return float(binomtest(covered, rows).proportion_ci(0.90, method="wilson").high)


def coverage_gate(held_out: Metrics, thresholds: MetricThresholds) -> Tuple[Decision, ...]:
    """The share of held-out dispatches within the p90 bound must reach ``coverage_min``.

    Measured on a few hundred rows the share is noisy (about +-0.02 at 200 rows): below the
    minimum beyond that noise fails; below it but within the noise warns.
    """
    coverage, minimum = held_out.coverage_p90, thresholds.coverage_min
    if coverage is None or held_out.rows == 0:
        return ()
    upper = coverage_upper_limit(round(coverage * held_out.rows), held_out.rows)
    words = (f"held-out coverage of the p90 bound {coverage:.3f} on {held_out.rows} rows "
             f"(95% upper confidence limit {upper:.3f})")
    if upper < minimum:
        return (Decision("coverage_p90", FAIL, f"{words} is below the minimum {minimum:g}",
                         coverage),)
    if coverage < minimum:
        return (Decision("coverage_p90", WARN, f"{words} is below the minimum {minimum:g} but "
                         f"within sampling error", coverage),)
    return (Decision("coverage_p90", PASS, f"{words} (minimum {minimum:g})", coverage),)


def basis_gates(
    held_out: Evaluation, thresholds: MetricThresholds, min_rows: int = DEFAULT_MIN_BASIS_ROWS
) -> Tuple[Decision, ...]:
    """The metric gates again on each basis's held-out rows (named ``<gate>_<basis>``).

    Only when the held-out rows span more than one basis (otherwise they repeat the overall
    gates word for word); a basis with fewer than ``min_rows`` held-out rows is scored (in the
    overall gates and the metadata) but not gated on its own, which one decision says.
    """
    scored = {b: m for b, m in held_out.by_basis.items() if m.rows > 0}
    if len(scored) < 2:
        return ()
    decisions: List[Decision] = []
    for basis, basis_metrics in scored.items():
        if basis_metrics.rows < min_rows:
            decisions.append(Decision(basis, PASS, (
                f"{basis} parts have {basis_metrics.rows} held-out rows, fewer than {min_rows}: "
                f"scored with the rest, not gated on their own")))
            continue
        for d in metric_gates(basis_metrics, thresholds):
            detail = f"{basis} parts ({basis_metrics.rows} rows): {d.detail}"
            decisions.append(Decision(f"{d.gate}_{basis}", d.outcome, detail, d.value))
    return tuple(decisions)


@dataclass(frozen=True)
class LogicOptions:
    """How the logic checks probe the model."""

    grid_points: int = DEFAULT_GRID_POINTS
    grid_extend: float = DEFAULT_GRID_EXTEND
    label_factor: float = DEFAULT_LABEL_FACTOR


def observed_ranges(rows: ValidTranche) -> Dict[str, Tuple[float, float]]:
    """The smallest and largest orders_placed seen per product code."""
    count = len(rows.product_codes)
    low = np.full(count, np.inf)
    high = np.full(count, -np.inf)
    np.minimum.at(low, rows.code_index, rows.orders_placed)
    np.maximum.at(high, rows.code_index, rows.orders_placed)
    return {
        code: (float(low[i]), float(high[i]))
        for i, code in enumerate(rows.product_codes) if np.isfinite(low[i])
    }


def logic_gates(
    model: DispatchModel,
    ranges: Mapping[str, Tuple[float, float]],
    label_max: float,
    options: LogicOptions = LogicOptions(),
) -> Tuple[Decision, Decision, Decision]:
    """Monotone and non-negative on a grid beyond the observed range; bounded on it."""
    bound = label_max * options.label_factor
    falling: List[str] = []
    negative: List[str] = []
    beyond: List[str] = []
    highest = 0.0
    for code in model.product_codes:
        low, high = ranges.get(code, (0.0, 0.0))
        top = high + options.grid_extend * max(high - low, 1.0)
        grid = np.linspace(0.0, top, options.grid_points)
        curve = model.curves[code]
        values = curve.predict(grid)
        if np.any(np.diff(values) < -_MONOTONE_SLACK * np.maximum(1.0, np.abs(values[1:]))):
            falling.append(code)
        if np.any(values < 0.0) or not np.all(np.isfinite(values)):
            negative.append(code)
        inside = curve.predict(np.linspace(low, high, options.grid_points))
        peak = float(np.max(inside))
        highest = max(highest, peak)
        if peak > bound or not np.isfinite(peak):
            beyond.append(code)
    grid_words = f"orders 0 to {options.grid_extend:.0%} of the observed span past the largest"
    monotone = (
        Decision("monotone", FAIL, f"predictions fall as orders grow for {some(falling)}")
        if falling else
        Decision("monotone", PASS, f"predictions never fall as orders grow ({grid_words})")
    )
    non_negative = (
        Decision("non_negative", FAIL, f"negative predictions for {some(negative)}")
        if negative else
        Decision("non_negative", PASS, f"no negative predictions ({grid_words})")
    )
    bounded = (
        Decision("bounded", FAIL, f"predictions above {bound:.4g} h ({options.label_factor:g}x "
                 f"the largest label) for {some(beyond)}", highest)
        if beyond else
        Decision("bounded", PASS, f"largest prediction on the observed range {highest:.4g} h is "
                 f"within {bound:.4g} h ({options.label_factor:g}x the largest label)", highest)
    )
    return monotone, non_negative, bounded


def champion_gate(
    challenger: DispatchModel,
    champion: Optional[DispatchModel],
    champion_version: Optional[str],
    held_out: ValidTranche,
    tolerance: float = DEFAULT_CHAMPION_TOLERANCE,
) -> Decision:
    """Publish unless the challenger's held-out MAE is worse than the champion's by > tolerance.

    Both are scored on the same held-out rows: those whose codes both models know.
    """
    if champion is None:
        return Decision("champion", PASS, "no champion is published; the challenger wins")
    both = set(champion.product_codes) & set(challenger.product_codes)
    shared = [i for i, code in enumerate(held_out.product_codes) if code in both]
    rows = np.flatnonzero(np.isin(held_out.code_index, shared))
    if len(rows) == 0:
        return Decision("champion", PASS, f"champion {champion_version} knows none of the "
                        "held-out product codes; the challenger wins")
    subset = held_out.subset(rows)
    scored = evaluate(challenger, subset)
    challenger_mae = scored.overall.mae
    champion_mae = evaluate(champion, subset).overall.mae
    limit = champion_mae * (1.0 + tolerance)
    words = (f"on {len(rows)} held-out rows the challenger's MAE is {challenger_mae:.4f} h, "
             f"champion {champion_version}'s {champion_mae:.4f} h (tolerance {tolerance:.1%})"
             f"{_by_basis_words(scored)}; of all {held_out.rows} held-out orders the challenger "
             f"answers {held_out.rows - evaluate(challenger, held_out).unscored_rows}, the "
             f"champion {held_out.rows - evaluate(champion, held_out).unscored_rows}")
    if challenger_mae > limit:
        unknown = sorted(set(challenger.product_codes) - set(champion.product_codes))
        later = ""
        if unknown:
            later = f"; new product codes {some(unknown)} wait for a later model"
        return Decision("champion", KEEP, f"{words}: the champion is kept{later}", challenger_mae)
    return Decision("champion", PASS, f"{words}: the challenger wins", challenger_mae)


def _by_basis_words(scored: Evaluation) -> str:
    """' (challenger by basis: product 0.51 h on 700 rows, ...)' or '' without bases."""
    parts = [f"{b} {m.mae:.4f} h on {m.rows} rows" for b, m in scored.by_basis.items() if m.rows]
    return f" (challenger by basis: {', '.join(parts)})" if parts else ""
