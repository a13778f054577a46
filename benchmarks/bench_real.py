"""Benchmark on real shops' data: the weekly cycle, Friday after Friday, beside four peers.

Usage: python benchmarks/bench_real.py [STORE_DIR] [--stores category product]
       [--weeks-from K] [--weeks-to K] [--run-earlier-fridays] [--train-arg=ARG ...]
       [--python PYTHON] [--jobs N] [--json PATH] [--keep DIR] [--quiet]

STORE_DIR (default ``../shared/data/real-dispatch``, looked for from the current directory,
then from the repository's root and its main checkout) is one store (it has ``datasets/``) or
a folder of stores (each subfolder with ``datasets/``). It is only read.

For each store, a fresh temporary store gains the real tranches one a Friday, oldest first.
Each Friday runs ``python -m pipeline.train_model STORE`` with its defaults, as a shop does (the
same Python as this script, or ``--python``; ``--train-arg`` adds an option), then the live
model, whatever ``models/latest.json`` names after the run (an older model when the run kept it
or failed), answers the next week's orders through the service's own code
(``pipeline.api.serving``, as ``serve_model --unknown-products catalogue``: parts it does not
know are answered from the catalogue curve). Friday K is the day tranche K arrives; it is
scored on tranche K + 1, so a store of N tranches has N - 1 Fridays.

Beside the model, four peers trained at each Friday on the same data:

- last week's median: the global median of the newest tranche;
- window per-code median: each code's median over train_model's history window (the newest
  tranche and those at most 13 weeks older, as ``--history-weeks`` reads them); a code not in
  the window gets the window's global median;
- LightGBM on the window, ``product_code`` as a categorical feature and ``orders_placed``,
  library defaults made deterministic (one thread, seed 0), once with the L2 objective
  (``regression``) and once with L1 (``regression_l1``); needs
  ``benchmarks/requirements_bench.txt`` (skipped with a message without it);
- reference tree: the notebook's DecisionTreeRegressor on one-hot ``product_code`` and
  ``orders_placed``, grid-searched (max_depth 4, 6, 8, 10, 12, None x min_samples_leaf 1, 5,
  10, 20, 40; 5-fold shuffled KFold, seed 0, MAE) on the newest tranche only.

It prints a line per Friday, then per store: Fridays with a live model (x of y); the exit
statuses of train_model and why it failed; the MAE (hours, order-weighted over the scored
weeks) of the live model beside every peer on the same orders (the weeks with a live model),
the ratio of the model's MAE to the best peer's, the peers over every week; the p90 bound's
coverage by basis (product, pooled, catalogue) and overall with row counts; which of the
issue's goals are met (a model every Friday, MAE <= the best peer, coverage 0.87-0.93).

``--weeks-from K`` / ``--weeks-to K`` (a Friday's number, or a date: the first Friday on or
after it, the last on or before it) score only those Fridays: tune on early weeks, confirm on
later ones. The tranches before the first scored Friday are in the store from the start, as a
shop that installs the pipeline with its back orders has them (``--run-earlier-fridays``: train
on each of those Fridays too, unscored, so the store also has their models and history).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.scoring import (  # noqa: E402
    ANSWER_BASES, COVERAGE_GOAL, COVERAGE_ROWS_JUDGED, DEFAULT_HISTORY_WEEKS, Answers,
    choose_tranches, coverage_by_basis, coverage_met, goal, live_version, mae, served_answers,
)

DEFAULT_STORE_DIR = "../shared/data/real-dispatch"
DATASETS = "datasets"
TREE_GRID = {"decisiontreeregressor__max_depth": [4, 6, 8, 10, 12, None],
             "decisiontreeregressor__min_samples_leaf": [1, 5, 10, 20, 40]}
TREE_FOLDS = 5
SEED = 0
LIGHTGBM_OBJECTIVES = {"LightGBM L2": "regression", "LightGBM L1": "regression_l1"}
LAST_MEDIAN, CODE_MEDIAN, TREE = "last week's median", "window per-code median", "reference tree"
PEERS = (LAST_MEDIAN, CODE_MEDIAN, *LIGHTGBM_OBJECTIVES, TREE)
SHORT = {LAST_MEDIAN: "last-med", CODE_MEDIAN: "code-med", "LightGBM L2": "lgbm-L2",
         "LightGBM L1": "lgbm-L1", TREE: "tree"}
MODEL = "live model"
INSTALL_HINT = ("pip install -c constraints/checks_py311.txt -r requirements_pipe.txt "
                "-r benchmarks/requirements_bench.txt")
_print_lock = threading.Lock()


def say(text: str) -> None:
    """Print a line at once, whole, whichever store's thread prints it."""
    with _print_lock:
        print(text, flush=True)


# ---------------------------------------------------------------------------- the stores


def main_checkout() -> Optional[Path]:
    """The main checkout of this repository when it runs from a git worktree, else None."""
    try:
        found = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    common = Path(found.stdout.strip())
    return common.parent if common.name == ".git" else None


def resolve_store_dir(given: str) -> Path:
    """STORE_DIR as given if absolute, else from the current directory, the repository's root
    or its main checkout, whichever has it first; SystemExit naming every place tried."""
    path = Path(given)
    bases = [Path.cwd(), REPO_ROOT]
    main = main_checkout()
    if main is not None:
        bases.append(main)
    tried = [path] if path.is_absolute() else [base / path for base in bases]
    for candidate in tried:
        if candidate.is_dir():
            return candidate.resolve()
    raise SystemExit(f"no store folder {given!r}: tried {', '.join(map(str, tried))}")


def find_stores(folder: Path, names: Optional[Sequence[str]]) -> List[Tuple[str, Path]]:
    """The stores in STORE_DIR: itself if it has datasets/, else each subfolder that has."""
    if (folder / DATASETS).is_dir():
        stores = [(folder.name, folder)]
    else:
        stores = [(sub.name, sub) for sub in sorted(folder.iterdir())
                  if (sub / DATASETS).is_dir()]
    if not stores:
        raise SystemExit(f"{folder} is neither a store (no {DATASETS}/) nor a folder of stores")
    if names:
        known = {name for name, _ in stores}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise SystemExit(f"no store {unknown} in {folder}; there are {sorted(known)}")
        stores = [(name, path) for name, path in stores if name in names]
    return stores


@dataclass
class Week:
    """One real tranche: its file name, the date it names and its rows."""

    name: str
    day: date
    rows: pd.DataFrame
    data: bytes


def read_weeks(store: Path) -> List[Week]:
    """The store's tranches, oldest first, in train_model's own order."""
    keys = [f"{DATASETS}/{p.name}" for p in (store / DATASETS).iterdir() if p.is_file()]
    choice = choose_tranches(keys)
    if choice.ignored:
        say(f"{store}: ignored (not a tranche name): {', '.join(choice.ignored)}")
    weeks = []
    for tranche in choice.found:
        path = store / tranche.key
        data = path.read_bytes()
        rows = pd.read_csv(path, dtype={"product_code": str})
        weeks.append(Week(path.name, tranche.timestamp.date(), rows, data))
    return weeks


def window_of(weeks: List[Week], newest: int, history_weeks: int) -> List[Week]:
    """The newest tranche and those train_model's history window reads with it."""
    choice = choose_tranches(f"{DATASETS}/{w.name}" for w in weeks[:newest + 1])
    inside = {t.key for t in choice.within_weeks(history_weeks)}
    return [w for w in weeks[:newest] if f"{DATASETS}/{w.name}" in inside] + [weeks[newest]]


def friday_number(text: str, weeks: List[Week], first: bool) -> int:
    """A Friday's number (1 = the first tranche) from a number or a date (YYYY-MM-DD)."""
    if text.isdigit():
        return int(text)
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"{text!r} is neither a Friday's number nor a date (YYYY-MM-DD)")
    days = [w.day for w in weeks]
    if first:
        return next((i + 1 for i, d in enumerate(days) if d >= day), len(days) + 1)
    return max((i + 1 for i, d in enumerate(days) if d <= day), default=0)


# ---------------------------------------------------------------------------- the peers


def frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The features every peer sees: product_code and orders_placed."""
    return pd.DataFrame({"product_code": rows["product_code"].astype(str),
                         "orders_placed": rows["orders_placed"].astype(float)})


def median_peers(window: pd.DataFrame, last: pd.DataFrame,
                 target: pd.DataFrame) -> Dict[str, np.ndarray]:
    """Last week's global median; the window's per-code median (its global one for new codes)."""
    hours = window["hours_to_dispatch"]
    per_code = hours.groupby(window["product_code"]).median()
    by_code = target["product_code"].map(per_code).fillna(hours.median())
    return {LAST_MEDIAN: np.full(len(target), float(last["hours_to_dispatch"].median())),
            CODE_MEDIAN: by_code.to_numpy(dtype=float)}


_lightgbm: List[Any] = []


def lightgbm_module() -> Optional[Any]:
    """lightgbm, imported on first use; None (said once) when it is not installed."""
    if not _lightgbm:
        try:
            import lightgbm
        except ImportError:
            say(f"LightGBM peers skipped: lightgbm is not installed here ({INSTALL_HINT})")
            lightgbm = None
        _lightgbm.append(lightgbm)
    return _lightgbm[0]


def lightgbm_peers(window: pd.DataFrame, target: pd.DataFrame) -> Dict[str, np.ndarray]:
    """LightGBM on the window, code as a category, with each objective (none without lightgbm)."""
    lgb = lightgbm_module()
    if lgb is None:
        return {}
    categories = pd.Index(sorted(window["product_code"].astype(str).unique()))

    def features(rows: pd.DataFrame) -> pd.DataFrame:
        x = frame(rows)
        x["product_code"] = pd.Categorical(x["product_code"], categories=categories)
        return x

    train_x, target_x = features(window), features(target)
    found = {}
    for name, objective in LIGHTGBM_OBJECTIVES.items():
        model = lgb.LGBMRegressor(objective=objective, n_jobs=1, random_state=SEED,
                                  deterministic=True, force_row_wise=True, verbose=-1)
        model.fit(train_x, window["hours_to_dispatch"], categorical_feature=["product_code"])
        found[name] = np.asarray(model.predict(target_x), dtype=float)
    return found


def tree_peer(last: pd.DataFrame, target: pd.DataFrame) -> Dict[str, np.ndarray]:
    """The reference project's grid-searched tree, trained on the newest tranche only."""
    from sklearn.compose import make_column_transformer
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    from sklearn.tree import DecisionTreeRegressor

    folds = min(TREE_FOLDS, len(last))
    if folds < 2:
        return {}
    search = GridSearchCV(
        make_pipeline(
            make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["product_code"]),
                                    remainder="passthrough"),
            DecisionTreeRegressor(random_state=SEED),
        ),
        TREE_GRID, cv=KFold(folds, shuffle=True, random_state=SEED),
        scoring="neg_mean_absolute_error",
    )
    search.fit(frame(last), last["hours_to_dispatch"])
    return {TREE: np.asarray(search.predict(frame(target)), dtype=float)}


def peer_estimates(window: List[Week], target: pd.DataFrame) -> Dict[str, np.ndarray]:
    """Every peer's estimates for the target week, trained on the window (newest last)."""
    rows = pd.concat([w.rows for w in window], ignore_index=True)
    last = window[-1].rows
    found = median_peers(rows, last, target)
    found.update(lightgbm_peers(rows, target))
    found.update(tree_peer(last, target))
    return found


# ---------------------------------------------------------------------------- the cycle


@dataclass
class Friday:
    """One Friday: the run, the live model, and every estimate for the next week's orders."""

    number: int
    day: date
    trained_rows: int
    status: int
    error: str
    seconds: float
    model_version: Optional[str]
    no_model: str
    hours: np.ndarray
    model: np.ndarray
    upper: np.ndarray
    basis: List[str]
    peers: Dict[str, np.ndarray] = field(default_factory=dict)
    new_model: bool = False

    @property
    def live(self) -> bool:
        """Whether a model answered this week."""
        return self.model_version is not None


def run_stage(python: str, store: str, extra: Sequence[str]) -> "subprocess.Popen[str]":
    """Start ``python -m pipeline.train_model STORE`` as a shop runs it (this checkout's code)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen([python, "-m", "pipeline.train_model", store, *extra],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def error_line(stderr: str) -> str:
    """The run's ERROR line without its timestamp (empty when there is none)."""
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    if not errors:
        return ""
    return errors[-1].split(" ERROR ", 1)[1].removeprefix("train_model: ")


def play_friday(args: argparse.Namespace, store: str, weeks: List[Week], k: int,
                scored: bool) -> Optional[Friday]:
    """Deliver tranche k (0-based), train, and score the live model on tranche k + 1."""
    week = weeks[k]
    (Path(store) / DATASETS / week.name).write_bytes(week.data)
    started = time.perf_counter()
    process = run_stage(args.python, store, args.train_arg)
    peers: Dict[str, np.ndarray] = {}
    target = weeks[k + 1].rows
    try:
        if scored:  # while the stage runs
            peers = peer_estimates(window_of(weeks, k, args.history_weeks), target)
    finally:
        _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if not scored:
        return None
    hours = target["hours_to_dispatch"].to_numpy(dtype=float)
    answers, why = served_answers(store, target["product_code"].astype(str).tolist(),
                                  target["orders_placed"].to_numpy(dtype=float))
    n = len(target)
    if answers is None:
        model, upper, basis, version = np.full(n, math.nan), np.full(n, math.nan), [""] * n, None
    else:
        model, upper = answers.estimate, answers.upper
        basis = [b if ok else "" for b, ok in zip(answers.basis, answers.answered)]
        version = answers.model_version
    return Friday(k + 1, week.day, len(week.rows), process.returncode, error_line(stderr),
                  seconds, version, why, hours, model, upper, basis, peers)


def friday_line(store: str, friday: Friday) -> str:
    """One Friday's progress line."""
    model = f"{mae(friday.hours, friday.model):7.1f}" if friday.live else "      -"
    peers = " ".join(f"{SHORT[p]} {mae(friday.hours, friday.peers[p]):6.1f}"
                     for p in PEERS if p in friday.peers)
    live = friday.model_version or "none"
    if friday.live:
        live += " (new)" if friday.new_model else " (kept)"
    return (f"{store} Friday {friday.number:2d} {friday.day}: {friday.trained_rows:4d} rows, "
            f"exit {friday.status} ({friday.seconds:4.1f} s), live {live} | next week "
            f"{len(friday.hours):4d} orders: model {model} {peers}")


def play_store(args: argparse.Namespace, name: str, folder: Path) -> Dict[str, Any]:
    """The whole cycle on one store; its summary (and its Fridays) as a dict."""
    weeks = read_weeks(folder)
    fridays = len(weeks) - 1
    if fridays < 1:
        raise SystemExit(f"{folder}: {len(weeks)} tranche(s); at least 2 are needed")
    first = friday_number(args.weeks_from, weeks, True) if args.weeks_from else 1
    last = friday_number(args.weeks_to, weeks, False) if args.weeks_to else fridays
    first, last = max(first, 1), min(last, fridays)
    if first > last:
        raise SystemExit(f"{name}: no Friday between {args.weeks_from} and {args.weeks_to}")
    started = time.perf_counter()
    played: List[Friday] = []
    with tempfile.TemporaryDirectory(prefix=f"bench_real_{name}_") as scratch:
        store = str(Path(args.keep) / name) if args.keep else scratch
        (Path(store) / DATASETS).mkdir(parents=True, exist_ok=False)
        start = 0 if args.run_earlier_fridays else first - 1
        for week in weeks[:start]:
            (Path(store) / DATASETS / week.name).write_bytes(week.data)
        previous = None
        for k in range(start, last):
            friday = play_friday(args, store, weeks, k, scored=k + 1 >= first)
            if friday is None:
                previous = live_version(store)
            else:
                friday.new_model = friday.live and friday.model_version != previous
                previous = friday.model_version
                played.append(friday)
                if not args.quiet:
                    say(friday_line(name, friday))
    summary = summarise(name, played)
    summary["seconds"] = time.perf_counter() - started
    return summary


# ---------------------------------------------------------------------------- the figures


def digest(error: str) -> str:
    """An error message with paths and numbers blanked, to count failures by kind."""
    return re.sub(r"(?<![\w.])-?\d[\d.e+-]*", "#", re.sub(r"/\S+", "<path>", error))[:160]


def summarise(name: str, fridays: List[Friday]) -> Dict[str, Any]:
    """The store's figures: live Fridays, statuses, MAE beside the peers, coverage by basis."""
    live = [f for f in fridays if f.live]
    statuses = Counter(f.status for f in fridays)
    reasons = Counter(digest(f.error) for f in fridays if f.error)
    names = [p for p in PEERS if all(p in f.peers for f in fridays)]

    def pooled(chosen: List[Friday], estimates: Callable[[Friday], np.ndarray]) -> float:
        if not chosen:
            return math.nan
        hours = np.concatenate([f.hours for f in chosen])
        return mae(hours, np.concatenate([estimates(f) for f in chosen]))

    answered = [np.isfinite(f.model) for f in live]
    unanswered = int(sum((~a).sum() for a in answered))
    scored = [Friday(**{**f.__dict__, "hours": f.hours[a], "model": f.model[a],
                        "peers": {p: v[a] for p, v in f.peers.items()}})
              for f, a in zip(live, answered)]
    model_mae = pooled(scored, lambda f: f.model)
    peers_live = {p: pooled(scored, lambda f, p=p: f.peers[p]) for p in names}
    peers_all = {p: pooled(fridays, lambda f, p=p: f.peers[p]) for p in names}
    best = min(peers_live, key=lambda p: peers_live[p]) if scored and names else None
    coverage: Counter[str] = Counter()
    for f in live:
        answers = _answers_of(f)
        for basis, (inside, rows) in coverage_by_basis(f.hours, answers).items():
            coverage[f"{basis} in"] += inside
            coverage[f"{basis} rows"] += rows
    return {
        "store": name,
        "fridays": len(fridays),
        "first_friday": str(fridays[0].day), "last_friday": str(fridays[-1].day),
        "live_fridays": len(live),
        "new_models": sum(f.new_model for f in fridays),
        "exit_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": dict(reasons.most_common()),
        "orders_scored": int(sum(len(f.hours) for f in scored)),
        "orders_all_weeks": int(sum(len(f.hours) for f in fridays)),
        "orders_unanswered": unanswered,
        "mae": {MODEL: model_mae, **peers_live},
        "mae_all_weeks": peers_all,
        "best_peer": best,
        "ratio_to_best_peer": model_mae / peers_live[best] if best else math.nan,
        "coverage": {basis: {"within": coverage[f"{basis} in"], "rows": coverage[f"{basis} rows"],
                             "share": coverage[f"{basis} in"] / coverage[f"{basis} rows"]}
                     for basis in (*ANSWER_BASES, "all") if coverage[f"{basis} rows"]},
        "weeks": [friday_record(f) for f in fridays],
    }


def _answers_of(friday: Friday) -> Answers:
    return Answers(friday.model_version or "", friday.model, friday.upper, friday.basis,
                   np.isfinite(friday.model))


def friday_record(friday: Friday) -> Dict[str, Any]:
    """One Friday for --json: the run, the live model and every MAE on the next week."""
    return {
        "friday": friday.number, "date": str(friday.day), "trained_rows": friday.trained_rows,
        "exit_status": friday.status, "error": friday.error, "train_seconds": friday.seconds,
        "live_model": friday.model_version, "new_model": friday.new_model,
        "no_model": friday.no_model,
        "orders": len(friday.hours),
        "mae": {MODEL: mae(friday.hours, friday.model) if friday.live else None,
                **{p: mae(friday.hours, v) for p, v in friday.peers.items()}},
        "bases": dict(Counter(b for b in friday.basis if b)),
    }


def report(summary: Dict[str, Any]) -> List[str]:
    """The store's summary as printed lines."""
    s = summary
    n, live = s["fridays"], s["live_fridays"]
    out = [f"== {s['store']}: {n} Fridays {s['first_friday']} .. {s['last_friday']}, each scored "
           f"on the next week ({s['orders_all_weeks']} orders); {s['seconds']:.0f} s"]
    out.append(f"  Fridays with a live model: {live} of {n} (goal: every Friday: "
               f"{goal(live == n)}); a new live model on {s['new_models']} of them")
    out.append("  train_model exit statuses: "
               + ", ".join(f"{k} x{v}" for k, v in s["exit_statuses"].items()))
    for reason, count in s["failures"].items():
        out.append(f"    {count} x {reason}")
    mae_live, mae_all = s["mae"], s["mae_all_weeks"]
    if live:
        extra = (f"; {s['orders_unanswered']} unanswered orders left out"
                 if s["orders_unanswered"] else "")
        out.append(f"  MAE (hours) on the {s['orders_scored']} orders of the {live} weeks with a "
                   f"live model{extra}  [over all {n} weeks]:")
    else:
        out.append(f"  MAE (hours): no live model on any Friday; the peers over all {n} weeks:")
    for name in (MODEL, *PEERS):
        over_all = f"  [{mae_all[name]:6.1f}]" if name in mae_all else ""
        if live and name in mae_live:
            best = "  <- best peer" if name == s["best_peer"] else ""
            out.append(f"    {name:24s} {mae_live[name]:7.2f}{over_all}{best}")
        elif over_all:
            out.append(f"    {name:24s}       -{over_all}")
    if live and s["best_peer"]:
        ratio = s["ratio_to_best_peer"]
        out.append(f"  model / best peer ({s['best_peer']}): {ratio:.3f} (goal <= 1: "
                   f"{goal(ratio <= 1.0)})")
    elif mae_all:
        best = min(mae_all, key=lambda p: mae_all[p])
        out.append(f"  model / best peer: no live model (goal <= 1: NOT met); best peer over "
                   f"all weeks: {best}")
    cover = s["coverage"]
    if cover:
        low, high = COVERAGE_GOAL
        parts = [f"{basis} {c['share']:.3f} ({c['within']}/{c['rows']})"
                 for basis, c in cover.items()]
        inside = all(coverage_met(c["within"], c["rows"]) for c in cover.values())
        out.append(f"  p90 coverage: {', '.join(parts)} (goal {low}-{high} for every basis of "
                   f">= {COVERAGE_ROWS_JUDGED} rows: {goal(inside)})")
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store_dir", metavar="STORE_DIR", nargs="?", default=DEFAULT_STORE_DIR,
                        help="a store (with datasets/) or a folder of stores; only read")
    parser.add_argument("--stores", nargs="+", help="only these stores of STORE_DIR")
    parser.add_argument("--weeks-from", help="the first Friday scored: its number or a date")
    parser.add_argument("--weeks-to", help="the last Friday scored: its number or a date")
    parser.add_argument("--run-earlier-fridays", action="store_true",
                        help="train on every Friday before --weeks-from too (unscored)")
    parser.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                        help="an option for train_model (repeat; e.g. --train-arg=--no-report); "
                             "default: none, its defaults")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter that runs train_model")
    parser.add_argument("--history-weeks", type=int, default=DEFAULT_HISTORY_WEEKS,
                        help="the peers' window (train_model's default)")
    parser.add_argument("--jobs", type=int, default=2, help="stores played at once")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--keep", metavar="DIR",
                        help="build the stores under DIR (kept: models, reports) not in /tmp")
    parser.add_argument("--quiet", action="store_true", help="no line per Friday")
    return parser.parse_args(argv)


def jsonable(value: Any) -> Any:
    """NaN as null, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Play every store, print the figures, write the JSON."""
    args = parse_args(argv)
    stores = find_stores(resolve_store_dir(args.store_dir), args.stores)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    say(f"bench_real: {', '.join(n for n, _ in stores)}; train_model "
        f"{' '.join(args.train_arg) or 'with its defaults'} ({args.python}); served with "
        f"--unknown-products catalogue; peers' window {args.history_weeks} weeks")
    say(f"peers: {', '.join(f'{SHORT[p]} = {p}' for p in PEERS)}")
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, min(args.jobs, len(stores)))) as pool:
        summaries = list(pool.map(lambda s: play_store(args, *s), stores))
    for summary in summaries:
        say("\n".join(report(summary)))
    say(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        document = {"argv": list(sys.argv[1:] if argv is None else argv),
                    "train_args": args.train_arg, "history_weeks": args.history_weeks,
                    "stores": {s["store"]: s for s in summaries}}
        Path(args.json).write_text(json.dumps(jsonable(document), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
