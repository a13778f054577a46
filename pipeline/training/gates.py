"""The gates a model passes before publishing: metrics, logic checks, champion vs challenger.

Each gate returns a small named :class:`Decision` (pass, warn, fail, or keep for
the champion gate) with a sentence in plain words, for the log and the metadata.

Accuracy is judged against naive baselines scored on the same held-out rows, so the gates fit
a shop of any scale: the window's per-code median and its global median, fitted on the rows the
model was fitted on (:class:`MedianBaselines`). The model fails when its absolute errors exceed
a baseline's beyond sampling error (a paired comparison, :func:`baseline_gate`). Absolute
levels of R² and MAE are available and off by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.types import union_categoricals
from scipy.stats import binomtest, t as student_t
from sklearn.metrics import mean_absolute_error, r2_score

from pipeline.metadata import Baseline, ByCode, Gate, HeldOut, Scores
from pipeline.model_format import (
    BASES, CATALOGUE_BASIS, PRODUCT_BASIS, DispatchModel, rows_by_code,
)
from pipeline.training.listing import some
from pipeline.training.validation import ValidTranche

PASS, WARN, FAIL, KEEP = "pass", "warn", "fail", "keep"
COVERAGE_GATE = "coverage_p90"
CODE_MEDIAN, GLOBAL_MEDIAN = "code_median", "global_median"
BASELINE_NAMES = {CODE_MEDIAN: "the window's per-code median",
                  GLOBAL_MEDIAN: "the window's global median"}
DEFAULT_BASELINE_CONFIDENCE = 0.99
# Paired differences of absolute errors within this share of the labels' scale (std + mean |y|)
# are ties: a model that answers a baseline's values is its equal on any CPU.
BASELINE_TIE_TOLERANCE = 1e-9
DEFAULT_GRID_POINTS = 200
DEFAULT_GRID_EXTEND = 0.5
DEFAULT_LABEL_FACTOR = 1.5
DEFAULT_CHAMPION_TOLERANCE = 0.05
DEFAULT_COVERAGE_MIN = 0.85
DEFAULT_MIN_BASIS_ROWS = 30
BASIS_LOSS_TOLERANCE = 0.05
_MONOTONE_SLACK = 1e-9

FloatArray = npt.NDArray[np.float64]
NO_HELD_OUT = "no held-out rows of a product code the model knows"


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
class MedianBaselines:
    """The naive peers a model must match: each product code's median hours over the rows the
    model was fitted on, and their global median (also the answer for a code without rows)."""

    per_code: Dict[str, float]
    overall: float

    @classmethod
    def fit(cls, parts: Sequence[ValidTranche]) -> "MedianBaselines":
        """The medians over every row of some tranches (the training rows and the history)."""
        parts = [p for p in parts if p.rows]
        if not parts:
            return cls({}, 0.0)
        codes = union_categoricals([
            pd.Categorical.from_codes(p.code_index, categories=list(p.product_codes))
            for p in parts])
        hours = pd.Series(np.concatenate([p.hours_to_dispatch for p in parts]))
        medians = hours.groupby(codes, observed=True).median()
        return cls({str(c): float(v) for c, v in medians.items()}, float(hours.median()))

    def predict(self, rows: ValidTranche) -> Dict[str, FloatArray]:
        """Each baseline's answer for every row, by baseline name."""
        table = np.asarray([self.per_code.get(c, self.overall) for c in rows.product_codes]
                           or [self.overall], dtype=np.float64)
        return {CODE_MEDIAN: table[rows.code_index],
                GLOBAL_MEDIAN: np.full(rows.rows, self.overall)}


@dataclass(frozen=True)
class Scored:
    """The rows a model was scored on, kept for paired comparisons: the labels, the model's
    estimates, each row's basis ('' without bases) and each baseline's estimates."""

    actual: FloatArray
    predicted: FloatArray
    basis: npt.NDArray[np.str_]
    baselines: Dict[str, FloatArray]

    def subset(self, mask: npt.NDArray[np.bool_]) -> "Scored":
        """The same for some of the rows."""
        return Scored(self.actual[mask], self.predicted[mask], self.basis[mask],
                      {name: values[mask] for name, values in self.baselines.items()})


@dataclass(frozen=True)
class Evaluation:
    """Metrics overall, per product code and (for a model with bases) per basis; rows of codes
    the model does not know are unscored. With baselines, their metrics on the same rows (overall
    and per basis) and the scored rows themselves, for the paired gates."""

    overall: Metrics
    per_code: Dict[str, Metrics]
    unscored_rows: int
    by_basis: Dict[str, Metrics] = field(default_factory=dict)
    baselines: Dict[str, Metrics] = field(default_factory=dict)
    baselines_by_basis: Dict[str, Dict[str, Metrics]] = field(default_factory=dict)
    scored: Optional[Scored] = field(default=None, compare=False, repr=False)

    def to_metadata(self) -> HeldOut:
        """As the metadata records it (``by_basis`` only for a model with bases, ``baselines``
        only when they were scored: per baseline, ``overall`` and, with bases, ``by_basis``)."""
        sections: Dict[str, Any] = {}
        if self.by_basis:
            sections["by_basis"] = {b: _scored(m) for b, m in self.by_basis.items()}
        if self.baselines:
            sections["baselines"] = {name: self._baseline(name, measured)
                                     for name, measured in self.baselines.items()}
        return HeldOut(
            overall=self.overall.to_metadata(),
            per_product_code=ByCode(Scores, {c: m.to_metadata()
                                             for c, m in sorted(self.per_code.items())}),
            unscored_rows=self.unscored_rows, **sections)

    def _baseline(self, name: str, measured: Metrics) -> Baseline:
        if not self.by_basis:
            return Baseline(overall=_scored(measured))
        return Baseline(overall=_scored(measured), by_basis={
            b: _scored(m) for b, m in self.baselines_by_basis.get(name, {}).items()})

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


def metrics_by_code(
    names: Sequence[str], codes: npt.NDArray[np.int64], actual: FloatArray,
    predicted: FloatArray, upper: Optional[FloatArray] = None,
) -> Dict[str, Metrics]:
    """:func:`metrics` for each product code with rows, in one pass over the rows (a catalogue
    of 100,000 parts is scored in a second, not part by part)."""
    size = len(names)
    rows = np.bincount(codes, minlength=size)
    seen = np.flatnonzero(rows)
    count = np.maximum(rows, 1).astype(np.float64)
    mae = np.bincount(codes, np.abs(actual - predicted), size) / count
    spread = actual - (np.bincount(codes, actual, size) / count)[codes]
    total = np.bincount(codes, spread * spread, size)
    residual = np.bincount(codes, (actual - predicted) ** 2, size)
    # As scikit-learn's r2_score: constant labels score 1 when matched exactly, else 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(total > 0.0, 1.0 - residual / total, (residual == 0.0).astype(np.float64))
    covered = None if upper is None else np.bincount(
        codes, (actual <= upper).astype(np.float64), size) / count
    return {names[i]: Metrics(int(rows[i]), float(mae[i]), float(r2[i]),
                              None if covered is None else float(covered[i]))
            for i in seen.tolist()}


@dataclass(frozen=True)
class MetricThresholds:
    """Error and warning levels: R² must not fall below, MAE (hours) must not rise above (each
    off when None, the default), the bound's coverage must reach ``coverage_min``, and the model
    must not lose to a baseline beyond ``baseline_confidence`` (one-sided)."""

    r2_min: Optional[float] = None
    r2_warn: Optional[float] = None
    mae_max: Optional[float] = None
    mae_warn: Optional[float] = None
    coverage_min: float = DEFAULT_COVERAGE_MIN
    baseline_confidence: float = DEFAULT_BASELINE_CONFIDENCE


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


class Answers(NamedTuple):
    """A model's answers to some rows as the service gives them with ``--unknown-products
    catalogue``: which rows are answered, the estimates and bounds of those, and the basis of
    each (``catalogue`` for a part the model does not know)."""

    answered: npt.NDArray[np.bool_]
    estimates: FloatArray
    upper: Optional[FloatArray]
    basis: npt.NDArray[np.str_]


def answers(model: DispatchModel, rows: ValidTranche) -> Answers:
    """The model's answers: its own curves for the parts it knows, the catalogue curve (when
    the model has one) for the others, which are otherwise left unanswered."""
    known, predictions, upper = predict_known(model, rows)
    basis_of = np.asarray([model.bases.get(c, PRODUCT_BASIS) for c in rows.product_codes]
                          or [PRODUCT_BASIS])
    basis = np.where(known, basis_of[rows.code_index], CATALOGUE_BASIS)
    if model.catalogue is None or known.all():
        return Answers(known, predictions, upper, basis[known])
    estimates = np.empty(rows.rows)
    estimates[known] = predictions
    outside = rows.orders_placed[~known]
    estimates[~known] = guess = model.catalogue.curve.predict(outside)
    bounds = None
    if upper is not None:
        bounds = np.empty(rows.rows)
        bounds[known] = upper
        bounds[~known] = np.maximum(model.catalogue.bound.predict(outside), guess)
    return Answers(np.ones(rows.rows, dtype=bool), estimates, bounds, basis)


def evaluate(
    model: DispatchModel, rows: ValidTranche, baselines: Optional[MedianBaselines] = None
) -> Evaluation:
    """Metrics of a model on some rows, overall, per product code it knows and per basis; with
    ``baselines``, theirs on the same rows.

    A model with a catalogue curve answers every row, as the service does when asked to answer
    parts it does not know; those rows count in the overall metrics and under the basis
    ``catalogue``.
    """
    found = answers(model, rows)
    answered, predictions, upper = found.answered, found.estimates, found.upper
    actual = rows.hours_to_dispatch[answered]
    codes = rows.code_index[answered]
    own = found.basis != CATALOGUE_BASIS
    per_code = metrics_by_code(rows.product_codes, codes[own], actual[own], predictions[own],
                               None if upper is None else upper[own])
    by_basis: Dict[str, Metrics] = {}
    row_basis = found.basis if model.bases else np.full(len(codes), "")
    if model.bases:
        for basis in BASES + ((CATALOGUE_BASIS,) if model.catalogue is not None else ()):
            mask = row_basis == basis
            by_basis[basis] = metrics(actual[mask], predictions[mask],
                                      None if upper is None else upper[mask])
    overall = metrics(actual, predictions, upper)
    unscored = int(rows.rows - answered.sum())
    if baselines is None:
        return Evaluation(overall, per_code, unscored, by_basis)
    peers = {name: values[answered] for name, values in baselines.predict(rows).items()}
    scored = Scored(actual, predictions, row_basis, peers)
    return Evaluation(
        overall, per_code, unscored, by_basis,
        {name: metrics(actual, values) for name, values in peers.items()},
        {name: {b: metrics(actual[row_basis == b], values[row_basis == b]) for b in by_basis}
         for name, values in peers.items()},
        scored,
    )


def metric_gates(held_out: Metrics, thresholds: MetricThresholds) -> Tuple[Decision, ...]:
    """R² and MAE on the held-out rows against their levels (each only when set); the p90
    bound's coverage."""
    decisions: List[Decision] = []
    if thresholds.r2_min is not None or thresholds.r2_warn is not None:
        decisions.append(_level("r2", f"held-out R² {held_out.r2:.4f}", held_out, held_out.r2,
                                thresholds.r2_min, thresholds.r2_warn, above=False))
    if thresholds.mae_max is not None or thresholds.mae_warn is not None:
        decisions.append(_level("mae", f"held-out MAE {held_out.mae:.4f} h", held_out,
                                held_out.mae, thresholds.mae_max, thresholds.mae_warn, above=True))
    return tuple(decisions) + coverage_gate(held_out, thresholds)


def _level(
    gate: str, words: str, held_out: Metrics, value: float, fail_at: Optional[float],
    warn_at: Optional[float], above: bool,
) -> Decision:
    """One absolute level's decision: ``value`` fails beyond ``fail_at`` (above it, or below it
    when not ``above``) and warns beyond ``warn_at``; no scored rows fail it."""
    if held_out.rows == 0:
        return Decision(gate, FAIL, NO_HELD_OUT)
    unit = " h" if gate == "mae" else ""
    side, bound = ("above", "maximum") if above else ("below", "minimum")

    def beyond(level: Optional[float]) -> bool:
        return level is not None and (value > level if above else value < level)

    if beyond(fail_at):
        return Decision(gate, FAIL, f"{words} is {side} the {bound} {fail_at:g}{unit}", value)
    if beyond(warn_at):
        return Decision(gate, WARN, f"{words} is {side} the warning level {warn_at:g}{unit}",
                        value)
    limit = (f"warning {side} {warn_at:g}{unit}" if warn_at is not None
             else f"fails {side} {fail_at:g}{unit}")
    return Decision(gate, PASS, f"{words} ({limit})", value)


@dataclass(frozen=True)
class Paired:
    """A model's absolute errors against a baseline's on the same rows: the mean difference
    (positive: the model is worse) and its one-sided lower confidence limit."""

    rows: int
    model_mae: float
    baseline_mae: float
    difference: float
    lower: float


def paired_difference(
    actual: FloatArray, predicted: FloatArray, baseline: FloatArray, confidence: float
) -> Paired:
    """The model's MAE minus the baseline's on the same rows, and the one-sided lower limit of
    that difference at ``confidence`` (Student's t on the paired differences of absolute error).

    Each row's difference is at most the gap between the two answers, however far the label
    lies (a parcel forgotten for weeks shifts both errors alike), so the mean of the differences
    is well measured even where the labels have a heavy tail. Differences within
    BASELINE_TIE_TOLERANCE of the labels' scale count as 0: a model that answers the baseline's
    values ties with it exactly. Fewer than two rows give no limit (-inf).
    """
    rows = len(actual)
    if rows == 0:
        return Paired(0, 0.0, 0.0, 0.0, -np.inf)
    model_errors, baseline_errors = np.abs(actual - predicted), np.abs(actual - baseline)
    differences = model_errors - baseline_errors
    scale = float(np.std(actual) + np.mean(np.abs(actual)))
    differences[np.abs(differences) <= BASELINE_TIE_TOLERANCE * scale] = 0.0
    mean = float(np.mean(differences))
    lower = -np.inf
    if rows > 1:
        spread = float(np.std(differences, ddof=1)) / np.sqrt(rows)
        lower = mean - float(student_t.ppf(confidence, rows - 1)) * spread
    return Paired(rows, float(np.mean(model_errors)), float(np.mean(baseline_errors)), mean,
                  lower)


def baseline_gate(
    gate: str, baseline: str, scored: Scored, confidence: float, tolerance: float = 0.0
) -> Decision:
    """The model must be at least as accurate (MAE) as a baseline on the same held-out rows.

    It fails when it is worse beyond sampling error (the one-sided lower confidence limit of the
    paired difference is above 0) and by more than ``tolerance`` of the baseline's MAE, warns
    when it is worse otherwise, and passes when it is not worse: a small shop's week of a dozen
    held-out rows is not refused for a model as good as the median, and a model that clearly
    loses to it is.
    """
    if len(scored.actual) == 0:
        return Decision(gate, FAIL, f"{NO_HELD_OUT}: nothing shows it is as accurate as "
                        f"{BASELINE_NAMES[baseline]}")
    found = paired_difference(scored.actual, scored.predicted, scored.baselines[baseline],
                              confidence)
    words = (f"held-out MAE {found.model_mae:.4f} h against {BASELINE_NAMES[baseline]}'s "
             f"{found.baseline_mae:.4f} h on {found.rows} rows (paired difference "
             f"{found.difference:+.4f} h, one-sided {confidence:.0%} lower limit "
             f"{found.lower:+.4f} h)")
    if found.lower > 0.0:
        beyond = f"{words}: the model is less accurate beyond sampling error"
        if found.difference > tolerance * found.baseline_mae:
            return Decision(gate, FAIL, beyond, found.difference)
        return Decision(gate, WARN, f"{beyond}, by {found.difference:.4f} h, within "
                        f"{tolerance:.0%} of its MAE: not refused for one basis",
                        found.difference)
    if found.difference > 0.0:
        return Decision(gate, WARN, f"{words}: the model is less accurate, within sampling "
                        f"error", found.difference)
    return Decision(gate, PASS, f"{words}: at least as accurate", found.difference)


def baseline_gates(
    scored: Optional[Scored], confidence: float, tolerance: float = 0.0
) -> Tuple[Decision, ...]:
    """The model against each baseline on some scored rows (``mae_vs_<baseline>``); none when
    no baseline was scored."""
    if scored is None:
        return ()
    return tuple(baseline_gate(f"mae_vs_{name}", name, scored, confidence, tolerance)
                 for name in scored.baselines)


def held_out_gates(held_out: Evaluation, thresholds: MetricThresholds) -> Tuple[Decision, ...]:
    """Every gate on the held-out rows: the levels and coverage, the baselines, then per basis."""
    return (metric_gates(held_out.overall, thresholds)
            + baseline_gates(held_out.scored, thresholds.baseline_confidence)
            + basis_gates(held_out, thresholds))


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
        return (Decision(COVERAGE_GATE, FAIL, f"{words} is below the minimum {minimum:g}",
                         coverage),)
    if coverage < minimum:
        return (Decision(COVERAGE_GATE, WARN, f"{words} is below the minimum {minimum:g} but "
                         f"within sampling error", coverage),)
    return (Decision(COVERAGE_GATE, PASS, f"{words} (minimum {minimum:g})", coverage),)


def basis_gates(
    held_out: Evaluation, thresholds: MetricThresholds, min_rows: int = DEFAULT_MIN_BASIS_ROWS
) -> Tuple[Decision, ...]:
    """The metric and baseline gates again on each basis's held-out rows (``<gate>_<basis>``).

    Against a baseline, a basis fails only when it loses beyond sampling error by more than
    BASIS_LOSS_TOLERANCE of the baseline's MAE; a smaller loss warns. A week's level moves every
    part of a basis together, so thousands of rows of one week are one draw of it: a model that
    followed last week's level loses a percent or two to a median that lags, by luck, not by
    what it knows of the parts. The overall gate stays exact.

    Only when the held-out rows span more than one basis (otherwise they repeat the overall
    gates word for word); a basis with fewer than ``min_rows`` held-out rows is scored (in the
    overall gates and the metadata) but not gated on its own, which one decision says. Answers
    from the catalogue curve (parts the model has never seen) count in the overall gates and
    are reported, not gated on their own: they are the model's guess for a new part.
    """
    scored = {b: m for b, m in held_out.by_basis.items() if m.rows > 0 and b in BASES}
    if len(scored) < 2:
        return ()
    decisions: List[Decision] = []
    for basis, basis_metrics in scored.items():
        if basis_metrics.rows < min_rows:
            decisions.append(Decision(basis, PASS, (
                f"{basis} parts have {basis_metrics.rows} held-out rows, fewer than {min_rows}: "
                f"scored with the rest, not gated on their own")))
            continue
        own = held_out.scored
        baselines = baseline_gates(None if own is None else own.subset(own.basis == basis),
                                   thresholds.baseline_confidence, BASIS_LOSS_TOLERANCE)
        for d in metric_gates(basis_metrics, thresholds) + baselines:
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
             f"knows the parts of {int(predict_known(challenger, held_out)[0].sum())}, the "
             f"champion {int(predict_known(champion, held_out)[0].sum())}")
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
