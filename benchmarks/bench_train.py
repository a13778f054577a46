"""Benchmark of the train_model stage as a whole process: wall time and peak memory.

Usage: python benchmarks/bench_train.py [--rows 1000 1000000] [--repeat 3]

For each size it writes two weekly simulated tranches into a temporary local store,
runs ``python -m pipeline.train_model STORE`` once untimed (a warm-up that also lets
Python cache bytecode, as an installed image has; ``--cold`` forbids that), then
``--repeat`` timed runs (each with ``--force``: the tranche is the one the live model was
trained on, which a plain re-run would not train again), and
prints the median and worst wall time and the peak resident memory of the process
against the goals: 1,000 rows within 2 s; 1,000,000 rows within 15 s and 1 GB. The stage writes its
run report as it does in production; ``--no-report`` times it without.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.simulate import write_tranches  # noqa: E402
from pipeline.store import open_store  # noqa: E402

GOALS: Dict[int, Tuple[float, float]] = {1_000: (2.0, 1024.0), 1_000_000: (15.0, 1024.0)}
UNTIL = datetime(2026, 11, 21, tzinfo=timezone.utc)


def run_stage(
    store: str, env: Dict[str, str], extra: Sequence[str] = ()
) -> Tuple[float, float, int]:
    """Wall seconds, peak RSS in MB and exit status of one stage process."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train_model", store, "--log-level", "WARNING", "--force",
         *extra],
        cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    assert process.stderr is not None
    errors = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        print(errors, file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024.0, process.returncode


def bench(rows: int, repeat: int, cold: bool, extra: Sequence[str] = ()) -> bool:
    """Time one tranche size; True when it meets its goals (or has none)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if cold:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        started = time.perf_counter()
        write_tranches(open_store(folder), rows, weeks=2, seed=1, shape="saturating", until=UNTIL)
        print(f"rows={rows:>9,}: tranches written in {time.perf_counter() - started:.1f} s")
        run_stage(folder, env, extra)
        walls: List[float] = []
        peaks: List[float] = []
        for _ in range(repeat):
            seconds, peak, status = run_stage(folder, env, extra)
            if status != 0:
                print(f"rows={rows:>9,}: the stage exited {status}")
                return False
            walls.append(seconds)
            peaks.append(peak)
    wall, worst, peak = statistics.median(walls), max(walls), max(peaks)
    goal = GOALS.get(rows)
    verdict = ""
    ok = True
    if goal is not None:
        ok = wall <= goal[0] and peak <= goal[1]
        verdict = f"  goal {goal[0]:g} s and {goal[1]:g} MB: {'met' if ok else 'MISSED'}"
    print(f"rows={rows:>9,}: wall median {wall:.2f} s (worst {worst:.2f} s of {repeat}), "
          f"peak RSS {peak:.0f} MB{verdict}")
    return ok


def main() -> int:
    """Run the benchmark for each requested size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=sorted(GOALS),
                        help="tranche sizes to time")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per size")
    parser.add_argument("--cold", action="store_true",
                        help="never cache bytecode (PYTHONDONTWRITEBYTECODE=1): every run compiles "
                             "what has no cached bytecode yet")
    parser.add_argument("--no-report", action="store_true",
                        help="time the stage without its run report")
    args = parser.parse_args()
    extra = ["--no-report"] if args.no_report else []
    results = [bench(rows, args.repeat, args.cold, extra) for rows in args.rows]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
