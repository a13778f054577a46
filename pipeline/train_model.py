"""The train_model stage (Bodywork's entry file): command line, logging and ``main()``.

Run as ``python -m pipeline.train_model STORE [options]`` or, as Bodywork does, as
``python train_model.py STORE [options]`` from ``pipeline/`` with PYTHONPATH at the
repo root. The run itself, step by step, is pipeline/training/run.py.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence, Tuple

import joblib

from pipeline import HelpFormatter, log_level
from pipeline.store import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_SECONDS, StoreError, open_store
from pipeline.training.cluster import ADDRESS_ENV, demote_dask_errors
from pipeline.training.drift import DEFAULT_DRIFT_THRESHOLD
from pipeline.training.estimator import DEFAULT_FOLDS, DEFAULT_MIN_ROWS_PER_CODE
from pipeline.training.gates import (
    DEFAULT_CHAMPION_TOLERANCE, DEFAULT_COVERAGE_MIN, DEFAULT_GRID_EXTEND, DEFAULT_LABEL_FACTOR,
    LogicOptions, MetricThresholds,
)
from pipeline.training.report import UNCHANGED, RunRecord, write_report
from pipeline.training.run import (
    DEFAULT_DASK_CONNECT_SECONDS, DEFAULT_HISTORY_WEEKS, DEFAULT_SEED, DEFAULT_TEST_FRACTION,
    EXIT_BAD_DATA, EXIT_CONCURRENT, EXIT_GATES, EXIT_NO_TRANCHE, EXIT_OK, EXIT_STORE, TrainOptions,
    run_and_record,
)
from pipeline.training.validation import (
    DEFAULT_MAX_BAD_ROW_SHARE, DEFAULT_MAX_HOURS, DEFAULT_MIN_ROWS, ContractOptions,
)

log = logging.getLogger("train_model")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[str, TrainOptions, str]:
    """The store URL, the options and the log level from the command line."""
    parser = argparse.ArgumentParser(
        prog="train_model",
        description="Train the time-to-dispatch model on the newest tranche in STORE, gate it "
                    "and publish it.",
        formatter_class=HelpFormatter,
        epilog=f"exit status: {EXIT_OK} published, current model deliberately kept, or nothing "
               f"to do (the live model's own tranche, or a rollback holds), 2 bad options, "
               f"{EXIT_STORE} store unavailable or the Dask cluster failed, "
               f"{EXIT_NO_TRANCHE} no tranche, "
               f"{EXIT_BAD_DATA} tranche breaks the data contract, {EXIT_GATES} model failed the "
               f"gates, {EXIT_CONCURRENT} another run published meanwhile",
    )
    add = parser.add_argument
    add("store", metavar="STORE", help="local directory, file:// URL or s3://bucket[/prefix]")
    add("--min-rows", type=int, default=DEFAULT_MIN_ROWS,
        help="fewest valid rows the newest tranche and the older tranches of its history "
             "window must hold together (the newest tranche needs at least one)")
    add("--max-hours", type=float, default=DEFAULT_MAX_HOURS,
        help="largest plausible hours_to_dispatch (a year); a row above it breaks a row rule "
             "and is set aside like any bad row")
    add("--max-bad-row-share", type=float, default=DEFAULT_MAX_BAD_ROW_SHARE,
        help="share of a tranche's rows that may break a row rule: they are set aside to "
             "quarantine/<tranche name>.csv and the rest is used (one row in any tranche "
             "unless 0); beyond it the tranche is refused")
    add("--min-rows-per-code", type=int, default=DEFAULT_MIN_ROWS_PER_CODE,
        help="parts with at least this many rows in the newest tranche get their own curve; "
             "rarer ones get a pooled curve (with --history-weeks 0: are not learned)")
    add("--history-weeks", type=int, default=DEFAULT_HISTORY_WEEKS,
        help="read the older tranches at most this many weeks before the newest: rare and "
             "new parts borrow their rows and the whole catalogue's curve (partial pooling); "
             "0: the newest tranche only, and rare parts are not learned")
    add("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
        help="share of every product code's rows held out for the gates when the history "
             "window holds no older tranche (a store's first; with one, the newest tranche is "
             "held out whole and the scored model is fitted on the older ones)")
    add("--seed", type=int, default=DEFAULT_SEED, help="seed of the split and the CV folds")
    add("--folds", type=int, default=DEFAULT_FOLDS, help="cross-validation folds choosing curves")
    add("--n-jobs", type=int, default=joblib.cpu_count(),
        help="processes fitting product codes in parallel (default: the usable CPUs; unused "
             "with --dask-scheduler)")
    add("--dask-scheduler", metavar="ADDRESS", default=os.environ.get(ADDRESS_ENV) or None,
        help=f"fit the product codes on the existing Dask cluster of this scheduler, e.g. "
             f"tcp://dask-scheduler:8786, instead of in --n-jobs local processes (same model, "
             f"byte for byte; the workers need this repository and the train stage's lock); "
             f"default: ${ADDRESS_ENV}, else fit locally")
    add("--dask-connect-timeout", type=float, default=DEFAULT_DASK_CONNECT_SECONDS,
        metavar="SECONDS", help="seconds to reach the Dask scheduler before the run fails (exit 3)")
    add("--r2-min", type=float, help="fail when held-out R² is below; None: off (the model must "
        "match the window's per-code and global medians on the same held-out rows)")
    add("--r2-warn", type=float, help="warn when held-out R² is below; None: off")
    add("--mae-max", type=float, help="fail when held-out MAE (hours) is above; None: off")
    add("--mae-warn", type=float, help="warn when held-out MAE (hours) is above; None: off")
    add("--coverage-min", type=float, default=DEFAULT_COVERAGE_MIN,
        help="fail when the share of held-out dispatches within the p90 bound is below")
    add("--label-factor", type=float, default=DEFAULT_LABEL_FACTOR,
        help="fail when a prediction on the observed range exceeds this times the largest label")
    add("--grid-extend", type=float, default=DEFAULT_GRID_EXTEND,
        help="the logic checks probe orders from 0 to this share of the observed span beyond it")
    add("--champion-tolerance", type=float, default=DEFAULT_CHAMPION_TOLERANCE,
        help="keep the published model when the new one's MAE is worse by more than this share")
    add("--drift-threshold", type=float, default=DEFAULT_DRIFT_THRESHOLD,
        help="warn when a feature's PSI against the previous tranche is above")
    parser.set_defaults(refit=True)
    add("--no-refit", dest="refit", action="store_false", default=argparse.SUPPRESS,
        help="publish the model fitted on the training rows (default: refit on all rows)")
    add("--store-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS,
        help="attempts per S3 request before the store counts as unavailable")
    add("--store-timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds to connect to or read from S3 before retrying")
    add("--force", action="store_true",
        help="train even when the live model was trained on this very tranche, or an operator "
             "rolled back from a model trained on it")
    add("--no-report", dest="report", action="store_false",
        help="write no run report under reports/")
    add("--log-level", default="INFO", choices=LOG_LEVELS, type=log_level(LOG_LEVELS),
        help="log threshold (either case)")
    args = parser.parse_args(argv)
    problems = [
        text for bad, text in (
            (not 0.0 < args.test_fraction < 1.0, "--test-fraction must be between 0 and 1"),
            (args.min_rows < 1, "--min-rows must be at least 1"),
            (args.min_rows_per_code < args.folds, "--min-rows-per-code must be >= --folds"),
            (args.folds < 2, "--folds must be at least 2"),
            (args.n_jobs < 1, "--n-jobs must be at least 1"),
            (args.history_weeks < 0, "--history-weeks must be >= 0"),
            (not args.max_hours > 0, "--max-hours must be positive"),
            (None not in (args.r2_min, args.r2_warn) and args.r2_warn < args.r2_min,
             "--r2-warn must be >= --r2-min"),
            (None not in (args.mae_warn, args.mae_max) and args.mae_warn > args.mae_max,
             "--mae-warn must be <= --mae-max"),
            (not 0.0 <= args.max_bad_row_share < 1.0,
             "--max-bad-row-share must be at least 0 and below 1"),
            (not 0.0 <= args.coverage_min <= 1.0, "--coverage-min must be between 0 and 1"),
            (args.champion_tolerance < 0, "--champion-tolerance must be >= 0"),
            (args.label_factor <= 0, "--label-factor must be positive"),
            (args.grid_extend < 0, "--grid-extend must be >= 0"),
            (args.store_attempts < 1, "--store-attempts must be at least 1"),
            (not args.store_timeout > 0, "--store-timeout must be positive"),
            (not args.dask_connect_timeout > 0, "--dask-connect-timeout must be positive"),
        ) if bad
    ]
    if problems:
        parser.error("; ".join(problems))
    options = TrainOptions(
        contract=ContractOptions(min_rows=args.min_rows, max_hours=args.max_hours,
                                 max_bad_row_share=args.max_bad_row_share),
        thresholds=MetricThresholds(args.r2_min, args.r2_warn, args.mae_max, args.mae_warn,
                                    args.coverage_min),
        logic=LogicOptions(label_factor=args.label_factor, grid_extend=args.grid_extend),
        min_rows_per_code=args.min_rows_per_code,
        folds=args.folds,
        test_fraction=args.test_fraction,
        seed=args.seed,
        champion_tolerance=args.champion_tolerance,
        drift_threshold=args.drift_threshold,
        refit=args.refit,
        store_attempts=args.store_attempts,
        store_timeout=args.store_timeout,
        force=args.force,
        report=args.report,
        n_jobs=args.n_jobs,
        history_weeks=args.history_weeks,
        dask_scheduler=args.dask_scheduler or None,
        dask_connect_timeout=args.dask_connect_timeout,
    )
    return args.store, options, args.log_level


def log_formatter() -> logging.Formatter:
    """The stage's log lines: ``2026-11-21T06:40:29Z INFO train_model: ...`` (UTC)."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                  "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    return formatter


def configure_logging(level: str) -> None:
    """Plain, UTC-timestamped lines on stderr (unless the host already set up logging)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter())
    handler.addFilter(demote_dask_errors)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, run, report, and turn every expected failure into one ERROR line and a status."""
    store_url, options, level = parse_args(argv)
    configure_logging(level)
    record = RunRecord(store_url)
    status = run_and_record(store_url, options, record)
    # A run that changed nothing (a re-run, a rollback that holds) says why in its one INFO line;
    # a report of it at every retry or weekly re-run would bury the reports that matter.
    if options.report and record.tranche_key is not None and record.outcome != UNCHANGED:
        try:
            write_report(open_store(store_url, options.store_attempts, options.store_timeout),
                         record)
        except StoreError as exc:
            log.warning("run report not written: %s", exc)
    return status


if __name__ == "__main__":
    sys.exit(main())
