"""The train_model stage's run: the newest tranche in, a validated, gated and safely published
model out, as small typed steps (the CLI is pipeline/train_model.py).

Steps: find the newest tranche, check the data contract (rows that break a row rule are set
aside, within a tolerated share, to ``quarantine/<tranche name>.csv``), read the older tranches
within ``--history-weeks`` (their bad rows set aside the same way; one that breaks the contract
is left out with a warning), check that the window holds ``--min-rows`` valid rows, measure
drift against the previous tranche, split the newest tranche (seeded, stratified by product
code), fit on its training rows and the history (parts with enough rows in the newest tranche
get their own curve, the rest a pooled one: pipeline/training/pooling.py), gate (held-out
metrics overall and per basis beside the window's median baselines, logic checks, champion vs
challenger), refit on all rows and re-check its logic, then publish artefact, metadata and
pointer. The per-code fits run in local processes or, with
``--dask-scheduler``, on an existing Dask cluster (pipeline/training/cluster.py); every other step
stays in this process. Before training, the live model is scored on the new tranche (its realised
accuracy), and a run on the very tranche the live model was trained on, or one an operator rolled
back from, publishes nothing. Every other run that read a tranche writes a report
(pipeline/training/report.py) under reports/.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ContextManager, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.types import union_categoricals
from sklearn.model_selection import train_test_split

from pipeline import artefacts, history
from pipeline.artefacts import Tranche, find_tranches
from pipeline.metadata import (
    BasisParts, ByCode, Fit, HistoryTranche, LeftOut, Metadata, Metrics, Options, Pooling,
    PreviousModel, Quarantine, QuarantinedTranche, Realised, ReportKeys, Rows, TrainedTranche,
    TrancheRef,
)
from pipeline.model_format import BASES, PRODUCT_BASIS, DispatchModel
from pipeline.store import (
    DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_SECONDS, ConcurrentUpdate, ObjectExists, ObjectNotFound,
    Store, StoreError, open_store,
)
from pipeline.training.cluster import ClusterError, connect_timeout
from pipeline.training.drift import DEFAULT_DRIFT_THRESHOLD, DriftSummary, tranche_drift
from pipeline.training.estimator import (
    DEFAULT_FOLDS, DEFAULT_MIN_ROWS_PER_CODE, DispatchTimeRegressor, FitResult, remembered_fits,
)
from pipeline.training.gates import (
    BASELINE_NAMES, COVERAGE_GATE, DEFAULT_CHAMPION_TOLERANCE, FAIL, KEEP, PASS, WARN, Decision,
    Evaluation, LogicOptions, MedianBaselines, MetricThresholds, answers,
    champion_gate, coverage_gate, evaluate, held_out_gates, logic_gates, metrics,
    observed_ranges,
)
from pipeline.training.listing import counts_summary, some
from pipeline.training.pooling import LOG_OFFSET_SHARE, TRANCHE, PooledDispatchRegressor
from pipeline.training.report import (
    FAILED, KEPT, PUBLISHED, REJECTED, UNCHANGED, Points, RunRecord,
)
from pipeline.training.validation import (
    ContractOptions, DataContractError, ValidTranche, Violation, usable_rows, validate_tranche,
    window_rows_violation,
)

EXIT_OK = 0
EXIT_STORE = 3
EXIT_CLUSTER = 3
EXIT_NO_TRANCHE = 4
EXIT_BAD_DATA = 5
EXIT_GATES = 6
EXIT_CONCURRENT = 7
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SEED = 0
DEFAULT_HISTORY_WEEKS = 13
DEFAULT_DASK_CONNECT_SECONDS = 10.0
# The refit on all rows is published only if, on the held-out rows, its MAE is no worse than
# the scored model's by more than this share, and its answers and week levels lie within this
# factor of the scored model's (a refit whose weeks or curves ran away is caught here).
REFIT_TOLERANCE = 0.05
REFIT_FACTOR = 2.0

log = logging.getLogger("train_model")


class StageFailure(Exception):
    """An expected failure: nothing is published; the message says why in plain words."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class TrainOptions:
    """Every tunable of the stage."""

    contract: ContractOptions = ContractOptions()
    thresholds: MetricThresholds = MetricThresholds()
    logic: LogicOptions = LogicOptions()
    min_rows_per_code: int = DEFAULT_MIN_ROWS_PER_CODE
    folds: int = DEFAULT_FOLDS
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = DEFAULT_SEED
    champion_tolerance: float = DEFAULT_CHAMPION_TOLERANCE
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD
    refit: bool = True
    store_attempts: int = DEFAULT_MAX_ATTEMPTS
    store_timeout: float = DEFAULT_TIMEOUT_SECONDS
    force: bool = False
    report: bool = True
    n_jobs: int = 1
    history_weeks: int = DEFAULT_HISTORY_WEEKS
    dask_scheduler: Optional[str] = None
    dask_connect_timeout: float = DEFAULT_DASK_CONNECT_SECONDS


class Split(NamedTuple):
    """Row positions of the newest tranche's training and held-out rows.

    ``out_of_time``: the newest tranche is held out whole, and the scored model is fitted on
    the older tranches of the history window alone: it is judged on what came next.
    """

    train: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]
    out_of_time: bool = False

    def describe(self) -> str:
        """What was held out, in words (metadata, report)."""
        if self.out_of_time:
            return ("the newest tranche, whole: the scored model was fitted on the older "
                    "tranches and judged on the week that came after them")
        return "a seeded share of the newest tranche's rows, stratified by product code"


class Champion(NamedTuple):
    """The published model (if readable), its version, and the pointer's version token."""

    model: Optional[DispatchModel]
    version: Optional[str]
    token: Optional[str]
    metadata: Optional[Metadata] = None
    pointer: Optional[artefacts.Pointer] = None


class Trained(NamedTuple):
    """The model fitted on the training rows, its held-out evaluation and gate decisions;
    ``widened``: the coverage failures that only the refit's wider bound may answer."""

    fit: FitResult
    held_out: Evaluation
    decisions: Tuple[Decision, ...]
    seconds: float
    widened: Tuple[Decision, ...] = ()


def split_rows(code_index: npt.NDArray[np.int64], test_fraction: float, seed: int) -> Split:
    """A seeded split holding out ``test_fraction`` of the rows, stratified by product code.

    Codes too rare to expect one held-out row are stratified together; a lone such row
    stays in training; when stratifying is impossible (more codes than held-out rows) the
    split is plain random, still seeded; a tranche too small to split holds out nothing.
    """
    counts = np.bincount(code_index)
    labels = np.where(counts[code_index] * test_fraction < 1.0, -1, code_index)
    rows = np.arange(len(code_index))
    kept = rows[labels == -1] if (labels == -1).sum() == 1 else rows[:0]
    pool = np.setdiff1d(rows, kept)
    for stratify in (labels[pool], None):
        try:
            train, test = train_test_split(
                pool, test_size=test_fraction, random_state=seed, stratify=stratify
            )
        except ValueError:
            continue
        return Split(np.sort(np.concatenate([train, kept])), np.sort(test))
    return Split(rows, rows[:0])


def choose_split(code_index: npt.NDArray[np.int64], history: "History",
                 options: TrainOptions) -> Split:
    """The rows the scored model is judged on.

    With older tranches in the history window, the newest tranche whole (out of time): the
    model fitted on the weeks before it answers it, as the published model will answer next
    week, and every part is scored however few its rows (a part the older weeks never saw is
    answered from the catalogue curve). A store's first tranche has no week before it: a
    seeded, stratified share of its rows is held out (:func:`split_rows`).
    """
    if options.history_weeks > 0 and any(t.rows.rows for t in history.tranches):
        rows = np.arange(len(code_index), dtype=np.int64)
        return Split(rows[:0], rows, out_of_time=True)
    return split_rows(code_index, options.test_fraction, options.seed)


class OlderTranche(NamedTuple):
    """An older tranche within the history window that meets the data contract."""

    key: str
    sha256: str
    rows: ValidTranche


class History(NamedTuple):
    """The older tranches that feed the model (newest first) and those left out, with why."""

    tranches: Tuple[OlderTranche, ...] = ()
    left_out: Tuple[Tuple[str, str], ...] = ()

    def fed(self, key: str, sha256: str, newest: ValidTranche) -> List[HistoryTranche]:
        """Every tranche that fed the model, newest first: key, sha256, valid rows and rows set
        aside."""
        return [HistoryTranche(key=key, sha256=sha256, rows=newest.rows,
                               rows_set_aside=newest.rows_set_aside, newest=True)] + [
            HistoryTranche(key=t.key, sha256=t.sha256, rows=t.rows.rows,
                           rows_set_aside=t.rows.rows_set_aside, newest=False)
            for t in self.tranches]

    def left_out_with_reasons(self) -> List[LeftOut]:
        """The older tranches left out, each with why."""
        return [LeftOut(key=key, reason=reason) for key, reason in self.left_out]

    def quarantine(self, key: str, newest: ValidTranche, share: float) -> Quarantine:
        """The rows set aside: the tolerated share, how many in all, and per tranche that set
        some aside (newest first) where they are kept and the rules they broke."""
        tranches = [
            QuarantinedTranche(key=name, quarantine=artefacts.quarantine_key(name),
                               **rows.set_aside.to_dict())
            for name, rows in [(key, newest)] + [(t.key, t.rows) for t in self.tranches]
            if rows.set_aside is not None]
        return Quarantine(max_bad_row_share=share,
                          rows_set_aside=sum(t.rows_set_aside or 0 for t in tranches),
                          tranches=tranches)


def features_of(rows: ValidTranche) -> pd.DataFrame:
    """The estimator's input for some rows: product code (categorical) and orders placed."""
    codes = pd.Categorical.from_codes(rows.code_index, categories=list(rows.product_codes))
    return pd.DataFrame({"product_code": codes, "orders_placed": rows.orders_placed})


def estimator(options: TrainOptions) -> DispatchTimeRegressor:
    """The model's estimator with the stage's settings."""
    return DispatchTimeRegressor(
        folds=options.folds, min_rows_per_code=options.min_rows_per_code,
        random_state=options.seed, n_jobs=options.n_jobs, dask_scheduler=options.dask_scheduler,
    )


def cluster_settings(options: TrainOptions) -> ContextManager[Any]:
    """Dask's settings for a fit on the cluster (nothing for a local fit)."""
    if not options.dask_scheduler:
        return contextlib.nullcontext()
    log.info("fitting the product codes on the Dask cluster of %s", options.dask_scheduler)
    return connect_timeout(options.dask_connect_timeout)


def pooled_estimator(options: TrainOptions) -> PooledDispatchRegressor:
    """The estimator of a run with history: own curves for common parts, pooled for the rest."""
    return PooledDispatchRegressor(
        folds=options.folds, min_rows_per_code=options.min_rows_per_code,
        random_state=options.seed, n_jobs=options.n_jobs, dask_scheduler=options.dask_scheduler,
    )


def pooled_features(
    rows: ValidTranche, history: History
) -> Tuple[pd.DataFrame, npt.NDArray[np.float64]]:
    """The pooled estimator's input: the newest rows (tranche 0) and the older ones (1, 2, ...).

    Without newest rows (an out-of-time split trains on the older tranches alone) the newest
    older tranche is tranche 0.
    """
    parts = [p for p in [rows] + [t.rows for t in history.tranches] if p.rows]
    codes = union_categoricals([
        pd.Categorical.from_codes(p.code_index, categories=list(p.product_codes)) for p in parts
    ])
    frame = pd.DataFrame({
        "product_code": codes,
        "orders_placed": np.concatenate([p.orders_placed for p in parts]),
        TRANCHE: np.concatenate([np.full(p.rows, i, dtype=np.int64) for i, p in enumerate(parts)]),
    })
    return frame, np.concatenate([p.hours_to_dispatch for p in parts])


def fit(rows: ValidTranche, options: TrainOptions, history: Optional[History] = None) -> FitResult:
    """The model's fit on some rows (and, with a history window, the older tranches).

    The per-code fits run on the Dask cluster when the options name a scheduler.
    """
    with cluster_settings(options):
        if options.history_weeks <= 0:
            return estimator(options).fit(features_of(rows), rows.hours_to_dispatch).fit_result()
        frame, hours = pooled_features(rows, history or History())
        result = pooled_estimator(options).fit(frame, hours).fit_result()
    log.info("curves: %d parts on their own rows (basis product), %d pooled; pooling: %s",
             *((result.pooling or {}).get("parts", {}).get(b, 0) for b in BASES),
             result.pooling)
    return result


def read_history(
    store: Store, delivered: "Delivered", options: TrainOptions,
    record: Optional[RunRecord] = None,
) -> History:
    """The older tranches within the history window, their bad rows set aside as the newest
    tranche's are; one that breaks the contract (beyond the tolerated share of bad rows, or a
    structural break) or cannot be read is left out with one warning naming it, never fatal."""
    kept: List[OlderTranche] = []
    left_out: List[Tuple[str, str]] = []
    for older in delivered.older:
        try:
            data = store.read_bytes(older.key)
            rows = validate_tranche(data, options.contract)
        except (StoreError, DataContractError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("older tranche %s left out of the history: %s",
                        store.location(older.key), reason)
            left_out.append((older.key, reason))
            continue
        set_aside(store, older.key, rows)
        kept.append(OlderTranche(older.key, artefacts.sha256_hex(data), rows))
    history = History(tuple(kept), tuple(left_out))
    if options.history_weeks > 0:
        log.info("history: %d older tranche(s) within %d weeks feed the model%s",
                 len(kept), options.history_weeks,
                 f", {len(left_out)} left out" if left_out else "")
    if record is not None:
        fed = history.fed(delivered.key, delivered.sha256, delivered.rows)
        record.history = [tranche.to_data() for tranche in fed]
        record.history_left_out = [out.to_data() for out in history.left_out_with_reasons()]
        record.quarantine = history.quarantine(
            delivered.key, delivered.rows, options.contract.max_bad_row_share).to_data()
    return history


def set_aside(store: Store, key: str, rows: ValidTranche) -> None:
    """Keep the rows a tranche set aside in ``quarantine/<tranche name>.csv`` and say so: a
    warning when it is news, a line of information when the file held them already (an older
    tranche read again week after week)."""
    found = rows.set_aside
    if found is None:
        return
    where = artefacts.quarantine_key(key)
    try:
        kept = store.read_bytes(where) == found.table
    except ObjectNotFound:
        kept = False
    if not kept:
        store.write_bytes(where, found.table)
    log.log(logging.INFO if kept else logging.WARNING, "tranche %s: %s; the rows are in %s",
            store.location(key), found.describe(), store.location(where))


def require_window_rows(
    store: Store, delivered: "Delivered", history: History, options: TrainOptions,
    record: Optional[RunRecord] = None,
) -> None:
    """The newest tranche and the older ones of its window must hold --min-rows valid rows."""
    violation = window_rows_violation(delivered.rows.rows,
                                      [t.rows.rows for t in history.tranches],
                                      options.contract.min_rows, options.history_weeks)
    if violation is not None:
        raise contract_failure(store, delivered.key, [violation], record)


def contract_failure(
    store: Store, key: str, violations: Sequence[Violation], record: Optional[RunRecord]
) -> StageFailure:
    """The newest tranche's broken rules as the stage's failure (exit 5), noted in the record."""
    if record is not None:
        record.violations = [dict(v.to_dict(), describe=v.describe()) for v in violations]
    return StageFailure(EXIT_BAD_DATA, f"tranche {store.location(key)} breaks the data contract: "
                        f"{DataContractError(violations)}")


def label_bound_gates(
    model: DispatchModel, rows: ValidTranche, options: TrainOptions,
    history: Optional[History] = None,
) -> Tuple[Decision, ...]:
    """The logic checks of every curve of a model against the rows it was fitted on."""
    older = history.tranches if history is not None else ()
    label_max = max([float(t.hours_to_dispatch.max()) for t in (rows,) if t.rows] + [
        float(t.rows.hours_to_dispatch.max()) for t in older if t.rows.rows])
    ranges = {**model.ranges, **observed_ranges(rows)}
    return logic_gates(model, ranges, label_max, options.logic)


def train_and_gate(
    tranche: ValidTranche, split: Split, options: TrainOptions, history: Optional[History] = None
) -> Trained:
    """Fit on the training rows (and the history); judge held-out metrics and logic."""
    train, test = tranche.subset(split.train), tranche.subset(split.test)
    started = time.perf_counter()
    result = fit(train, options, history)
    seconds = time.perf_counter() - started
    if not result.model.curves:
        raise StageFailure(EXIT_BAD_DATA, (
            f"no product code has {options.min_rows_per_code} training rows "
            f"(the training split has {counts_summary(train.rows_by_code())}); nothing to learn"
        ))
    older = [t.rows for t in history.tranches] if history is not None else []
    held_out = evaluate(result.model, test, MedianBaselines.fit([train] + older))
    log_coverage(held_out)
    log_baselines(held_out)
    decisions = (held_out_gates(held_out, options.thresholds)
                 + label_bound_gates(result.model, train, options, history))
    short: Tuple[Decision, ...] = ()
    if options.refit and options.history_weeks > 0:
        short = tuple(d for d in decisions if d.outcome == FAIL
                      and d.gate.startswith(COVERAGE_GATE))
        decisions = tuple(widened(d) if d in short else d for d in decisions)
    return Trained(result, held_out, decisions, seconds, short)


def widened(decision: Decision) -> Decision:
    """A pooled run's bound that missed its coverage on the held-out rows is widened, not
    refused: the refit calibrates its bound on those very rows too (they are the latest rows
    no model saw), and its coverage is checked there (``refit_coverage_p90``); only if the
    refit cannot be published does the failure stand. So it warns here, naming what follows."""
    return Decision(decision.gate, WARN, f"{decision.detail}; the published bound is widened: "
                    f"the refit calibrates it on these rows too", decision.value)


def log_coverage(held_out: Evaluation) -> None:
    """One line: the p90 bound's held-out coverage overall and for the least covered codes."""
    if held_out.overall.coverage_p90 is None:
        return
    covered = sorted(((m.coverage_p90, code) for code, m in held_out.per_code.items()
                      if m.coverage_p90 is not None))
    lowest = "per product code" if len(covered) <= 10 else (
        f"lowest of {len(covered):,} product codes")
    by_basis = "".join(f"; {b} parts {m.coverage_p90:.3f} on {m.rows} rows"
                       for b, m in held_out.by_basis.items()
                       if m.coverage_p90 is not None and m.rows)
    log.info("held-out coverage of the p90 bound: %.3f overall%s; %s: %s",
             held_out.overall.coverage_p90, by_basis, lowest,
             some(f"{code} {value:.3f}" for value, code in covered))


def log_baselines(held_out: Evaluation) -> None:
    """One line: the held-out MAE of the model beside each baseline's on the same rows."""
    peers = ", ".join(f"{BASELINE_NAMES[name]} {m.mae:.4f} h"
                      for name, m in held_out.baselines.items())
    log.info("held-out MAE on %d rows: the model %.4f h; %s", held_out.overall.rows,
             held_out.overall.mae, peers)


def read_champion(store: Store) -> Champion:
    """The published model to beat; unreadable is logged as a warning and treated as none."""
    found = store.read_versioned(artefacts.POINTER_KEY)
    if found is None:
        return Champion(None, None, None)
    data, token = found
    try:
        pointer = artefacts.Pointer.from_json(data, store.location(artefacts.POINTER_KEY))
        loaded = artefacts.load_pointed(store, pointer)
    except artefacts.ModelUnavailable as exc:
        log.warning("the published model cannot be read, so the challenger wins: %s", exc)
        return Champion(None, None, token)
    return Champion(loaded.model, loaded.version, token, loaded.metadata, pointer)


def measure_drift(
    store: Store, previous: Optional[Tranche], current: ValidTranche, threshold: float,
    record: Optional[RunRecord] = None,
) -> DriftSummary:
    """Drift against the previous tranche; any problem with it only skips the measure."""
    if previous is None:
        return DriftSummary(None, threshold, note="no previous tranche")
    try:
        rows = usable_rows(store.read_bytes(previous.key))
    except StoreError as exc:
        log.warning("drift not measured: cannot read the previous tranche: %s", exc)
        return DriftSummary(previous.key, threshold, note=f"previous tranche unreadable: {exc}")
    if rows is None or rows.rows == 0:
        log.warning("drift not measured: previous tranche %s has no usable rows", previous.key)
        return DriftSummary(previous.key, threshold, note="previous tranche has no usable rows")
    if record is not None:
        record.previous_key, record.previous_points = previous.key, points(rows)
    summary = tranche_drift(rows, current, previous.key, threshold)
    psi = ", ".join(f"{f.feature} {f.psi:.3f}" for f in summary.features)
    if summary.drifted:
        log.warning("drift above PSI %g against %s: %s", threshold, previous.key, psi)
    else:
        log.info("drift against %s (PSI): %s", previous.key, psi)
    return summary


def git_commit() -> str:
    """GIT_COMMIT_HASH, else the repo's HEAD, else 'unknown'."""
    commit = os.environ.get("GIT_COMMIT_HASH", "").strip()
    if commit:
        return commit
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=True,
        )
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> Dict[str, str]:
    """Versions of Python and the libraries the stage used."""
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name, module_name in (
        ("pandas", "pandas"), ("pandera", "pandera"), ("scikit-learn", "sklearn"),
        ("scipy", "scipy"), ("joblib", "joblib"), ("boto3", "boto3"), ("botocore", "botocore"),
        ("dask", "dask"), ("distributed", "distributed"),
    ):
        module = sys.modules.get(module_name)
        if module is not None:
            versions[name] = str(getattr(module, "__version__", "unknown"))
    return versions


def log_decisions(decisions: Sequence[Decision]) -> None:
    """One log line per gate decision, at WARNING when it warns or fails."""
    for d in decisions:
        level = logging.WARNING if d.outcome in (WARN, FAIL) else logging.INFO
        log.log(level, "gate %s: %s: %s", d.gate, d.outcome, d.detail)


def build_metadata(
    store: Store,
    tranche_key: str,
    tranche_sha256: str,
    tranche: ValidTranche,
    split: Split,
    trained: Trained,
    final: FitResult,
    decisions: Sequence[Decision],
    drift: DriftSummary,
    options: TrainOptions,
    training_seconds: float,
    created_at: datetime,
    model_sha256: str,
    history: Optional[History] = None,
    published: str = "refit on all rows",
    previous: Optional[PreviousModel] = None,
    report: Optional[ReportKeys] = None,
) -> Metadata:
    """Everything a reader needs to know about how the published model came to be."""
    history = history or History()
    return Metadata(
        model_version=artefacts.make_model_version(created_at, model_sha256),
        model_sha256=model_sha256,
        created_at=created_at.isoformat(),
        tranche=TrainedTranche(key=tranche_key, location=store.location(tranche_key),
                               sha256=tranche_sha256,
                               ignored_columns=list(tranche.ignored_columns)),
        rows=Rows(
            total=tranche.rows,
            train=int(len(split.train)),
            test=int(len(split.test)),
            per_product_code=tranche.rows_by_code(),
            skipped_product_codes=dict(final.skipped),
            skipped_product_codes_in_training_split=dict(trained.fit.skipped),
        ),
        metrics=Metrics(held_out=trained.held_out.to_metadata()),
        fits=ByCode(Fit, {code: Fit.model_validate(asdict(f))
                          for code, f in sorted(final.fits.items())}),
        history=history.fed(tranche_key, tranche_sha256, tranche),
        history_left_out=history.left_out_with_reasons(),
        history_weeks=options.history_weeks,
        quarantine=history.quarantine(tranche_key, tranche,
                                      options.contract.max_bad_row_share),
        bases=bases_of(final.model),
        pooling=None if final.pooling is None else Pooling.model_validate(final.pooling),
        published_model=published,
        held_out=split.describe(),
        gates=[d.to_metadata() for d in decisions],
        drift=drift.to_metadata(),
        product_codes=list(final.model.product_codes),
        library_versions=library_versions(),
        git_commit=git_commit(),
        training_seconds=round(training_seconds, 3),
        options=Options.model_validate(asdict(options)),
        previous_model=previous,
        report=report,
    )


def bases_of(model: DispatchModel) -> Dict[str, BasisParts]:
    """Parts per basis; a model without bases rests on its parts' own rows throughout."""
    counts = dict.fromkeys(BASES, 0)
    for basis in model.bases.values() if model.bases else [PRODUCT_BASIS] * len(model.curves):
        counts[basis] += 1
    return {basis: BasisParts(parts=parts) for basis, parts in counts.items()}


class Delivered(NamedTuple):
    """The newest tranche's key and bytes, its valid rows, the tranche before it, and the older
    tranches within the history window (newest first)."""

    key: str
    data: bytes
    sha256: str
    rows: ValidTranche
    previous: Optional[Tranche]
    older: Tuple[Tranche, ...] = ()


def points(rows: ValidTranche) -> Points:
    """A tranche's rows as the report draws them."""
    return Points(rows.codes(), rows.orders_placed, rows.hours_to_dispatch)


def read_newest_tranche(
    store: Store, contract: ContractOptions, record: Optional[RunRecord] = None,
    history_weeks: int = 0,
) -> Delivered:
    """Find the newest tranche and hold it to the data contract."""
    record = record if record is not None else RunRecord(store.url)
    choice = find_tranches(store)
    if choice.latest is None:
        raise StageFailure(EXIT_NO_TRANCHE, (
            f"no tranche found: no key like datasets/time_to_dispatch_<ISO timestamp>.csv "
            f"in {store.location(artefacts.DATASETS_PREFIX)}"
        ))
    key = choice.latest.key
    log.info("newest tranche: %s", store.location(key))
    record.tranche_key, record.tranche_location = key, store.location(key)
    data = store.read_bytes(key)
    record.tranche_sha256 = sha256 = artefacts.sha256_hex(data)
    try:
        rows = validate_tranche(data, contract)
    except DataContractError as exc:
        raise contract_failure(store, key, exc.violations, record) from None
    set_aside(store, key, rows)
    log.info("tranche meets the data contract: %d rows, %s",
             rows.rows, counts_summary(rows.rows_by_code()))
    if rows.ignored_columns:
        log.warning("ignoring extra columns %s", ", ".join(rows.ignored_columns))
    record.points = points(rows)
    return Delivered(key, data, sha256, rows, choice.previous, choice.within_weeks(history_weeks))


def require_passed(decisions: Sequence[Decision], what: str) -> None:
    """Log the decisions; StageFailure naming every failed gate if any failed."""
    log_decisions(decisions)
    failed = [d for d in decisions if d.outcome == FAIL]
    if failed:
        raise StageFailure(EXIT_GATES, f"{what} rejected by the gates: " + "; ".join(
            f"{d.gate}: {d.detail}" for d in failed))


class Refit(NamedTuple):
    """The model refit on all rows, its checks and the seconds it took."""

    fit: FitResult
    decisions: Tuple[Decision, ...]
    seconds: float


def refit_and_check(
    tranche: ValidTranche, options: TrainOptions, history: Optional[History] = None,
    trained: Optional[Trained] = None, split: Optional[Split] = None,
) -> Refit:
    """The same fit on all rows, with the logic checks run again on it and, given the scored
    model, the checks against it (:func:`refit_checks`); every decision named refit_*."""
    started = time.perf_counter()
    final = fit(tranche, options, history)
    seconds = time.perf_counter() - started
    checks = tuple(
        Decision(f"refit_{d.gate}", d.outcome, d.detail, d.value)
        for d in label_bound_gates(final.model, tranche, options, history)
    )
    if trained is not None and split is not None:
        checks += refit_checks(trained.fit, final, tranche.subset(split.test), split,
                               options.thresholds)
    log_decisions(checks)
    return Refit(final, checks, seconds)


def refit_checks(scored: FitResult, refit: FitResult, held_out: ValidTranche, split: Split,
                 thresholds: MetricThresholds) -> Tuple[Decision, ...]:
    """The refit checked against the scored model on the held-out rows (which it has seen).

    Its MAE there must be no worse than the scored model's by more than REFIT_TOLERANCE; its
    answers must typically (the median row) lie within REFIT_FACTOR of the scored model's; the
    levels of the weeks both fitted must agree within REFIT_FACTOR (up to a common factor);
    and its bound, calibrated on these rows too, must cover them (``coverage_min``).
    """
    first, second = answers(scored.model, held_out), answers(refit.model, held_out)
    both = first.answered & second.answered
    if not both.any():
        return ()
    estimates = np.full(held_out.rows, np.nan)
    estimates[first.answered] = first.estimates
    again = np.full(held_out.rows, np.nan)
    again[second.answered] = second.estimates
    hours = held_out.hours_to_dispatch[both]
    before = float(np.mean(np.abs(hours - estimates[both])))
    after = float(np.mean(np.abs(hours - again[both])))
    words = (f"on the {int(both.sum())} held-out rows both answer the refit's MAE is {after:.4f} "
             f"h, the scored model's {before:.4f} h (tolerance {REFIT_TOLERANCE:.0%})")
    decisions = [Decision("refit_mae", FAIL if after > before * (1.0 + REFIT_TOLERANCE) else PASS,
                          words, after)]
    offset = LOG_OFFSET_SHARE * float(np.median(held_out.hours_to_dispatch))
    ratio = float(np.exp(np.median(np.abs(np.log(
        (again[both] + offset) / (estimates[both] + offset))))))
    words = (f"the refit's estimates of those rows differ from the scored model's by a factor "
             f"{ratio:.3f} (median row; at most {REFIT_FACTOR:g})")
    decisions.append(Decision("refit_estimates", FAIL if ratio > REFIT_FACTOR else PASS,
                              words, ratio))
    levels = (scored.pooling or {}).get("week_levels"), (refit.pooling or {}).get("week_levels")
    if levels[0] and levels[1]:
        # The scored model's week 0 is the refit's week 1 when the newest was held out whole.
        first_levels = np.log(np.asarray(levels[0], dtype=np.float64))
        second_levels = np.log(np.asarray(levels[1], dtype=np.float64))[int(split.out_of_time):]
        shared = min(len(first_levels), len(second_levels))
        if shared >= 2:
            gap = second_levels[:shared] - first_levels[:shared]
            worst = float(np.exp(np.max(np.abs(gap - np.mean(gap)))))
            words = (f"the levels of the {shared} weeks both models fitted agree within a factor "
                     f"{worst:.3f} (at most {REFIT_FACTOR:g})")
            decisions.append(Decision("refit_week_levels", FAIL if worst > REFIT_FACTOR else PASS,
                                      words, worst))
    if second.upper is not None:
        bounded = metrics(held_out.hours_to_dispatch[second.answered], second.estimates,
                          second.upper)
        decisions.extend(Decision(f"refit_{d.gate}", d.outcome, f"the refit's bound, calibrated "
                                  f"on these rows too: {d.detail}", d.value)
                         for d in coverage_gate(bounded, thresholds))
    return tuple(decisions)


def trained_on_this(champion: Champion, tranche_sha256: str) -> bool:
    """Whether the live model was trained on exactly these tranche bytes."""
    return champion.metadata is not None and champion.metadata.tranche.sha256 == tranche_sha256


def measure_realised(
    store: Store, champion: Champion, key: str, tranche_sha256: str, tranche: ValidTranche,
    run_id: str,
) -> Optional[Realised]:
    """The live model's error on all rows of a tranche it never saw, recorded once in the store."""
    model, version = champion.model, champion.version
    if model is None or version is None:
        return None
    if not set(model.product_codes) & set(tranche.rows_by_code()):
        log.info("realised accuracy not measured: the live model %s knows none of the tranche's "
                 "product codes", version)
        return None
    scored = evaluate(model, tranche).to_metadata()
    promised = None if champion.metadata is None else champion.metadata.heldout_mae
    record = Realised(
        model_version=version,
        tranche=TrancheRef(key=key, sha256=tranche_sha256),
        rows_scored=scored.overall.rows,
        unscored_rows=scored.unscored_rows,
        mae=scored.overall.mae,
        r2=scored.overall.r2,
        per_product_code=scored.per_product_code,
        by_basis=scored.by_basis,
        heldout_mae=promised,
        recorded_at=datetime.now(timezone.utc).isoformat(),
        run_id=run_id,
    )
    try:
        where, record = history.record_realised(store, record)
        log.info("realised accuracy of the live model %s on this tranche: MAE %s h on %s rows "
                 "(it promised %s h); recorded in %s", version, _hours(record.mae),
                 record.rows_scored, _hours(promised), store.location(where))
    except StoreError as exc:
        log.warning("realised accuracy of %s not recorded: %s", version, exc)
    return record


def _hours(value: Optional[float]) -> str:
    return "?" if value is None else f"{value:.4f}"


def previous_model(champion: Champion, realised: Optional[Realised]) -> Optional[PreviousModel]:
    """What the new model's metadata says about the model it replaces."""
    if champion.pointer is None:
        return None
    return PreviousModel(
        model_version=champion.pointer.model_version,
        model_sha256=champion.pointer.model_sha256,
        metadata_sha256=champion.pointer.metadata_sha256,
        heldout_mae=None if champion.metadata is None else champion.metadata.heldout_mae,
        realised_mae=None if realised is None else realised.mae,
        realised=realised,
    )


def run(store_url: str, options: TrainOptions, record: Optional[RunRecord] = None) -> int:
    """The stage: returns EXIT_OK when published, kept or unchanged, else raises."""
    record = record if record is not None else RunRecord(store_url)
    store = open_store(store_url, options.store_attempts, options.store_timeout)
    delivered = read_newest_tranche(store, options.contract, record, options.history_weeks)
    tranche, tranche_sha256 = delivered.rows, delivered.sha256
    champion = read_champion(store)
    record.live_version, record.live_model = champion.version, champion.model
    record.live_metadata = champion.metadata
    if unchanged(champion, tranche_sha256, options, record) or rolled_back(
            store, tranche_sha256, options, record):
        return EXIT_OK
    history = read_history(store, delivered, options, record)
    require_window_rows(store, delivered, history, options, record)
    realised = record.realised = None if trained_on_this(champion, tranche_sha256) else (
        measure_realised(store, champion, delivered.key, tranche_sha256, tranche, record.run_id))
    drift = measure_drift(store, delivered.previous, tranche, options.drift_threshold, record)
    record.drift = drift.to_dict()
    split = choose_split(tranche.code_index, history, options)
    with remembered_fits():
        trained = train_and_gate(tranche, split, options, history)
        record.held_out, record.pooling = trained.held_out.to_dict(), trained.fit.pooling
        record.decisions = [d.to_dict() for d in trained.decisions]
        record.new_model = trained.fit.model
        require_passed(trained.decisions, "the model")
        verdict = challenge(trained, champion, tranche.subset(split.test), options, record)
        if verdict.outcome == KEEP:
            return EXIT_OK
        final = finish(trained, verdict, tranche, options, history, record, split)
    model_bytes = final.fit.model.to_json()
    created_at = datetime.now(timezone.utc)
    html_key, json_key = record.report_keys()
    metadata = build_metadata(
        store, delivered.key, tranche_sha256, tranche, split, trained, final.fit,
        final.decisions, drift, options, final.seconds, created_at,
        artefacts.sha256_hex(model_bytes), history, final.describe(options.refit),
        previous_model(champion, realised), ReportKeys(html=html_key, json=json_key),
    )
    pointer = publish_or_explain(store, model_bytes, metadata, created_at, champion.token)
    record.outcome, record.model_version = PUBLISHED, pointer.model_version
    record.summary = f"model {pointer.model_version} published" + (
        f", replacing {champion.version}" if champion.version else "")
    log.info("published model %s (%s) for %s product code(s): %s", pointer.model_version,
             store.location(pointer.model_key), f"{len(final.fit.model.curves):,}",
             some(final.fit.model.product_codes))
    return EXIT_OK


def unchanged(
    champion: Champion, tranche_sha256: str, options: TrainOptions, record: RunRecord
) -> bool:
    """Whether the live model was trained on this very tranche (and --force was not given)."""
    if not trained_on_this(champion, tranche_sha256) or options.force:
        return False
    record.outcome = UNCHANGED
    record.summary = (f"the live model {champion.version} was trained on this very tranche "
                      f"(sha256 {tranche_sha256[:12]}...); --force trains anyway")
    log.info("nothing published: %s", record.summary)
    return True


def rolled_back(
    store: Store, tranche_sha256: str, options: TrainOptions, record: RunRecord
) -> bool:
    """Whether an operator rolled back from a model trained on this very tranche (no --force)."""
    hold = None if options.force else history.rollback_hold(store, tranche_sha256)
    if hold is None:
        return False
    record.outcome, record.summary = UNCHANGED, hold.explain()
    log.info("nothing published: %s", record.summary)
    return True


def challenge(
    trained: Trained, champion: Champion, held_out: ValidTranche, options: TrainOptions,
    record: RunRecord,
) -> Decision:
    """Champion vs challenger on the held-out rows; a kept champion is noted in the record."""
    verdict = champion_gate(trained.fit.model, champion.model, champion.version,
                            held_out, options.champion_tolerance)
    log_decisions([verdict])
    record.decisions.append(verdict.to_dict())
    if verdict.outcome == KEEP:
        record.outcome = KEPT
        record.summary = (f"the live model {champion.version} was deliberately kept: "
                          f"{verdict.detail}")
        log.info("nothing published: the current model %s was deliberately kept", champion.version)
    return verdict


class Final(NamedTuple):
    """The model to publish, every gate decision it passed, the seconds spent fitting and
    whether it is the refit on all rows."""

    fit: FitResult
    decisions: List[Decision]
    seconds: float
    refit: bool = False

    def describe(self, refit_asked: bool) -> str:
        """Which model is published, in words (metadata)."""
        if self.refit:
            return "refit on all rows"
        if refit_asked:
            return "fitted on the training rows (the refit failed its checks against it)"
        return "fitted on the training rows"


def finish(
    trained: Trained, verdict: Decision, tranche: ValidTranche, options: TrainOptions,
    history: History, record: RunRecord, split: Optional[Split] = None,
) -> Final:
    """The model to publish: what was scored, or its refit on all rows once the refit passed
    its checks against it (unless --no-refit). A refit that fails them is not published: the
    scored model is, and the decisions say why."""
    final = Final(trained.fit, list(trained.decisions) + [verdict], trained.seconds)
    if options.refit:
        refit = refit_and_check(tranche, options, history, trained, split)
        failed = [d for d in refit.decisions if d.outcome == FAIL]
        if failed and trained.widened:
            raise StageFailure(EXIT_GATES, "the model rejected by the gates: " + "; ".join(
                f"{d.gate}: {d.detail}" for d in trained.widened) + "; and its refit, whose "
                "bound would be wider, failed " + "; ".join(
                    f"{d.gate}: {d.detail}" for d in failed))
        if failed:
            kept = tuple(Decision(d.gate, WARN, f"{d.detail}: the refit is not published, the "
                                  f"scored model is", d.value) if d.outcome == FAIL else d
                         for d in refit.decisions)
            log.warning("the refit on all rows failed %s; the scored model is published",
                        ", ".join(d.gate for d in failed))
            final = Final(trained.fit, final.decisions + list(kept),
                          final.seconds + refit.seconds, refit=False)
            record.decisions += [d.to_dict() for d in kept]
        else:
            final = Final(refit.fit, final.decisions + list(refit.decisions),
                          final.seconds + refit.seconds, refit=True)
            record.decisions += [d.to_dict() for d in refit.decisions]
            record.pooling = refit.fit.pooling
    record.new_model = final.fit.model
    if final.fit.skipped:
        log.warning("%s product code(s) with fewer than %d rows are not learned (the API will "
                    "reject them as unknown): %s", f"{len(final.fit.skipped):,}",
                    options.min_rows_per_code,
                    some(f"{code} ({n} rows)" for code, n in final.fit.skipped.items()))
    return final


def publish_or_explain(
    store: Store, model_bytes: bytes, metadata: Metadata, created_at: datetime,
    token: Optional[str],
) -> artefacts.Pointer:
    """Publish; a lost race becomes a StageFailure (exit 7) saying what happened."""
    version = metadata.model_version
    try:
        return artefacts.publish(store, model_bytes, metadata, created_at, token)
    except ObjectExists as exc:
        raise StageFailure(EXIT_CONCURRENT, (
            f"another run created model {version}'s objects meanwhile ({exc}); "
            f"the latest-model pointer was not moved"
        )) from None
    except ConcurrentUpdate as exc:
        raise StageFailure(EXIT_CONCURRENT, (
            f"another run moved the latest-model pointer meanwhile ({exc}); model {version} "
            f"was written complete but is not published"
        )) from None


def run_and_record(store_url: str, options: TrainOptions, record: RunRecord) -> int:
    """Run, turn every expected failure into one ERROR line, and note the outcome in the record."""
    failure: Optional[str] = None
    try:
        status = run(store_url, options, record)
    except StageFailure as exc:
        failure, status = str(exc), exc.exit_code
    except ConcurrentUpdate as exc:
        failure = f"another run moved the latest-model pointer meanwhile ({exc})"
        status = EXIT_CONCURRENT
    except StoreError as exc:
        failure, status = f"the store is unavailable: {exc}", EXIT_STORE
    except ClusterError as exc:
        failure, status = str(exc), EXIT_CLUSTER
    if failure is not None:
        log.error("nothing published: %s", failure)
        record.outcome = REJECTED if status in (EXIT_BAD_DATA, EXIT_GATES) else FAILED
        record.summary = f"nothing published: {failure}"
        if record.violations:
            count = len(record.violations)
            record.summary = (f"nothing published: {record.tranche_location} breaks the data "
                              f"contract: {count} rule{'s' if count != 1 else ''} broken (below)")
    record.exit_status = status
    return status
