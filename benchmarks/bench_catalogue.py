"""Benchmark of the long tail: every part answered, as accurately as its data allows.

Usage: python benchmarks/bench_catalogue.py [--parts 2000] [--rows 20000] [--weeks 6]
       [--seeds 0 1 2] [--shape saturating] [--world scaled] [--n-jobs N] [--history-weeks 13]
       [--report]

Per seed it writes a simulated long-tailed catalogue (``pipeline.simulate.catalogue_world``:
popularity 1/rank, new parts each week, a warehouse-wide change from week to week, noise
growing with the queue) as ``--weeks`` weekly tranches into a temporary local store, runs
``python -m pipeline.train_model STORE`` as a whole process (wall time, and the peak resident
memory of the stage and its worker processes; without its run report unless ``--report``),
loads the published model and scores it on a
fresh draw of the newest week's orders against the world's truth. It prints, per seed:

- answered: the share of the fresh orders the model answers, and the share whose part appears
  in any tranche of the history (the goal: equal);
- the MAE as a ratio to the noise floor (the MAE of the true expected hours), order-weighted,
  for all orders (goal <= 1.10), parts with >= 30 rows in the newest tranche (<= 1.03), parts
  with 1-29 rows (<= 1.30) and parts seen only in earlier weeks (reported);
- the p90 bound's coverage for parts with >= 30 rows and with fewer (goal 0.87-0.93).

``--world shaped`` draws the catalogue from ``benchmarks/catalogue.py`` instead, a world in which
parts differ in their curve's shape (own base, ceiling and scale), not by a factor, and the
warehouse does not change between weeks: a check that nothing is tuned to one simulator.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline import artefacts  # noqa: E402
from pipeline.simulate import catalogue_world, write_catalogue  # noqa: E402
from benchmarks.catalogue import shaped_world, write_shaped  # noqa: E402
from pipeline.store import open_store  # noqa: E402

UNTIL = datetime(2026, 11, 21, tzinfo=timezone.utc)
GOALS = {"all": 1.10, ">=30": 1.03, "1-29": 1.30}
COVERAGE_GOAL = (0.87, 0.93)


def train(store: str, extra: List[str]) -> Tuple[float, float]:
    """Run the train_model stage on a store: wall seconds and the peak memory (MB) of a child."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.train_model", store, *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"train_model failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return seconds, peak_mb


def scored_groups(
    newest_rows: Dict[str, int], codes: npt.NDArray[np.str_]
) -> Dict[str, npt.NDArray[np.bool_]]:
    """Orders by the rows their part has in the newest tranche."""
    rows = np.asarray([newest_rows.get(str(c), 0) for c in codes])
    return {"all": rows >= 0, ">=30": rows >= 30, "1-29": (rows >= 1) & (rows < 30),
            "earlier weeks only": rows == 0}


def one_seed(args: argparse.Namespace, seed: int) -> Dict[str, float]:
    """Simulate, train, score one seed; print its line."""
    with tempfile.TemporaryDirectory() as root:
        store = open_store(root)
        world: Any
        if args.world == "shaped":
            world = shaped_world(args.parts, args.rows, args.weeks, seed)
            write_shaped(store, world, UNTIL)
        else:
            world = catalogue_world(args.parts, args.rows, args.weeks, seed, args.shape)
            write_catalogue(store, world, UNTIL)
        newest = world.tranche(world.weeks - 1)
        weekly = (world.tranche(w).product_code for w in range(world.weeks))
        seen = {str(c) for codes in weekly for c in np.unique(codes)}
        extra = ["--n-jobs", str(args.n_jobs), "--history-weeks", str(args.history_weeks)]
        extra += [] if args.report else ["--no-report"]
        seconds, peak_mb = train(root, extra)
        model = artefacts.load_latest(store).model
    fresh = world.tranche(world.weeks - 1, draw=1)
    codes = fresh.product_code
    names, counts = np.unique(newest.product_code, return_counts=True)
    groups = scored_groups(dict(zip(names.tolist(), counts.tolist())), codes)
    known = np.isin(codes, list(model.curves))
    in_history = np.isin(codes, list(seen))
    estimate, upper, _ = model.predict_bounded(list(codes[known]), fresh.orders_placed[known])
    assert upper is not None
    hours, truth = fresh.hours_to_dispatch[known], fresh.expected_hours[known]
    result = {"answered": float(known.mean()), "in_history": float(in_history.mean()),
              "seconds": seconds, "peak_mb": peak_mb}
    line = [f"seed {seed}: answered {known.mean():.4f} (parts in the history: "
            f"{in_history.mean():.4f})"]
    for name, mask in groups.items():
        m = mask[known]
        if not m.any():
            continue
        error, floor = np.abs(hours[m] - estimate[m]), np.abs(hours[m] - truth[m])
        ratio = float(np.mean(error) / np.mean(floor))
        cover = float(np.mean(hours[m] <= upper[m]))
        result[f"ratio {name}"], result[f"coverage {name}"] = ratio, cover
        goal = f" (goal <= {GOALS[name]:.2f})" if name in GOALS else ""
        line.append(f"MAE/noise floor {name} {ratio:.3f}{goal} on {int(m.sum())} orders, "
                    f"p90 coverage {cover:.3f}")
    low = groups["1-29"] | groups["earlier weeks only"]
    cover_low = float(np.mean(hours[low[known]] <= upper[low[known]]))
    result["coverage <30"] = cover_low
    line.append(f"p90 coverage <30 rows {cover_low:.3f} (goal {COVERAGE_GOAL[0]}-"
                f"{COVERAGE_GOAL[1]}); training {seconds:.1f} s, peak memory {peak_mb:.0f} MB")
    print(";\n  ".join(line), flush=True)
    return result


def main() -> None:
    """Parse, run every seed, print a line each and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=20000, help="orders per week")
    parser.add_argument("--weeks", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shape", default="saturating", choices=("saturating", "linear"))
    parser.add_argument("--world", default="scaled", choices=("scaled", "shaped"),
                        help="scaled: pipeline.simulate's catalogue (parts differ by a factor); "
                             "shaped: benchmarks/catalogue.py (parts differ in shape)")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--history-weeks", type=int, default=13)
    parser.add_argument("--report", action="store_true",
                        help="let the stage write its run report (timed with the rest)")
    args = parser.parse_args()
    print(f"catalogue of {args.parts} parts, {args.rows} orders a week, {args.weeks} weeks, "
          f"world {args.world}, shape {args.shape}, --history-weeks {args.history_weeks}",
          flush=True)
    results = [one_seed(args, seed) for seed in args.seeds]
    worst = {k: max(r.get(k, float("nan")) for r in results) for k in results[0]}
    print("worst over seeds: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
