"""Benchmark of the train_model stage as a whole process: wall time and peak memory.

Usage: python benchmarks/bench_train.py [--scenarios rows codes catalogue] [--rows 1000 1000000]
       [--codes 20 200 2000] [--parts 1000 10000 100000] [--weekly-rows 1000000] [--dask]
       [--repeat 3] [--n-jobs N] [--cold]

``rows``: a tranche of each size over the 5 simulated product codes, against the goals
1,000 rows within 5 s and 1,000,000 rows within 15 s and 1 GB. ``codes``: tranches of
500 rows per product code (on average) for each count of codes, against the goal 2,000
codes (1,000,000 rows) within 120 s and 2 GB; it prints the time per code and the time per
code added between sizes: the latter stays flat when time grows linearly with the codes (the
former falls as the process's fixed start-up is shared by more codes).
``catalogue``: ``--weeks`` (2) weeks of ``--weekly-rows`` orders over a long-tailed catalogue of
each ``--parts`` count (``pipeline.simulate.catalogue_world``: popularity 1/rank, new parts each
week; ``--world shaped``: testing_support/worlds.py's parts of their own shapes), one timed run
each, against the goal 100,000 parts within 600 s and 4 GB; it prints how time and memory grow
between sizes and the published artefact's sha256. ``--dask`` then runs the largest catalogue
again on a real cluster started here (``dask scheduler`` and two ``dask worker`` processes on
loopback, one thread each) and prints its time beside the local run's and whether the artefacts
are identical.

For each tranche it writes two weekly tranches into a temporary local store, runs
``python -m pipeline.train_model STORE`` once untimed (a warm-up that also lets Python
cache bytecode, as an installed image has; ``--cold`` forbids that), then ``--repeat``
timed runs (1 for the codes scenario; each with ``--force``, since a plain re-run on the tranche
the live model was trained on trains nothing), and prints the median and worst wall time, the
peak resident memory of the stage process and the peak of its whole process tree (the
stage and its joblib workers, sampled every 0.2 s: what a pod's memory request must hold).
The stage writes its run report as in production; ``--no-report`` times it without.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.artefacts import POINTER_KEY  # noqa: E402
from pipeline.metadata import BasisParts, read_metadata  # noqa: E402
from pipeline.model_format import POOLED_BASIS  # noqa: E402
from pipeline.simulate import (  # noqa: E402
    CSV_HEADER, DEFAULT_PRODUCT_CODES, delivery_times, simulate_tranche, tranche_key,
    write_tranches,
)
from pipeline.simulate import catalogue_world, write_catalogue  # noqa: E402
from pipeline.store import open_store  # noqa: E402
from testing_support.worlds import shaped_world, write_shaped  # noqa: E402

ROW_GOALS: Dict[int, Tuple[float, float]] = {1_000: (5.0, 1024.0), 1_000_000: (15.0, 1024.0)}
CODE_GOALS: Dict[int, Tuple[float, float]] = {2_000: (120.0, 2048.0)}
CATALOGUE_GOALS: Dict[int, Tuple[float, float]] = {100_000: (600.0, 4096.0)}
ROWS_PER_CODE = 500
UNTIL = datetime(2026, 11, 21, tzinfo=timezone.utc)


def _tree_rss_mb(root: int) -> float:
    """The summed resident memory of a process and all its descendants, in MB."""
    parents: Dict[int, int] = {}
    rss: Dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(pid, 0.0) for pid in tree)


def run_stage(store: str, env: Dict[str, str], extra: List[str]) -> Tuple[float, float, float, int]:
    """Wall seconds, peak RSS of the process and of its tree in MB, and the exit status."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train_model", store, "--log-level", "WARNING", "--force",
         *extra],
        cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE,
    )
    peak_tree = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak_tree[0] = max(peak_tree[0], _tree_rss_mb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert process.stderr is not None
    errors = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        print(errors, file=sys.stderr)
    peak = usage.ru_maxrss / 1024.0
    return seconds, peak, max(peak_tree[0], peak), process.returncode


def write_many_codes(folder: str, codes: int, seed: int) -> None:
    """Two weekly tranches of ``codes`` product codes, ``ROWS_PER_CODE`` rows each on average.

    Each group of five codes repeats the simulation's five shapes, so no code's hours exceed
    the contract's bound however many codes there are.
    """
    store = open_store(folder)
    groups = max(1, codes // len(DEFAULT_PRODUCT_CODES))
    for week, moment in enumerate(delivery_times(2, UNTIL)):
        lines = [CSV_HEADER]
        for group in range(groups):
            names = tuple(f"P{group:04d}-{c}" for c in DEFAULT_PRODUCT_CODES)
            tranche = simulate_tranche(
                ROWS_PER_CODE * len(names), seed=seed + 7919 * week + group, shape="saturating",
                product_codes=names, week=week,
            )
            lines.append(tranche.to_csv().decode().split("\n", 1)[1].rstrip("\n"))
        key = tranche_key(moment.strftime("%Y-%m-%dT%H:%M:%S"))
        store.write_bytes(key, ("\n".join(lines) + "\n").encode())


def measure(label: str, folder: str, repeat: int, env: Dict[str, str], extra: List[str],
            goal: Optional[Tuple[float, float]], warm_up: bool = True) -> Optional[float]:
    """Warm up, time ``repeat`` runs and print one line; the median seconds, None on failure."""
    return measured(label, folder, repeat, env, extra, goal, warm_up)[0]


def measured(label: str, folder: str, repeat: int, env: Dict[str, str], extra: List[str],
             goal: Optional[Tuple[float, float]], warm_up: bool = True
             ) -> Tuple[Optional[float], float]:
    """As measure, with the peak memory of the process tree (MB) beside the median seconds."""
    if warm_up:
        run_stage(folder, env, extra)
    walls: List[float] = []
    peaks: List[float] = []
    trees: List[float] = []
    for _ in range(repeat):
        seconds, peak, tree, status = run_stage(folder, env, extra)
        if status != 0:
            print(f"{label}: the stage exited {status}")
            return None, 0.0
        walls.append(seconds)
        peaks.append(peak)
        trees.append(tree)
    wall, worst, peak, tree = statistics.median(walls), max(walls), max(peaks), max(trees)
    verdict = ""
    if goal is not None:
        ok = wall <= goal[0] and tree <= goal[1]
        verdict = f"  goal {goal[0]:g} s and {goal[1]:g} MB: {'met' if ok else 'MISSED'}"
    print(f"{label}: wall median {wall:.2f} s (worst {worst:.2f} s of {repeat}), "
          f"peak RSS {peak:.0f} MB (process tree {tree:.0f} MB){verdict}", flush=True)
    return wall, tree


def published_sha256(folder: str) -> str:
    """The sha256 of the model the latest-model pointer names."""
    return str(json.loads(open_store(folder).read_bytes(POINTER_KEY))["model_sha256"])


def fitting_rate(folder: str, workers: int) -> str:
    """The published model's fitting rate in words: own-curve fits per second, and per core.

    Parts with their own curve are fitted twice (on the training split, then refit on all
    rows); pooled parts cost no fit of their own, so they are counted apart.
    """
    pointer = json.loads(open_store(folder).read_bytes(POINTER_KEY))
    metadata = read_metadata(open_store(folder).read_bytes(pointer["metadata_key"]))
    fitted = 2 * len(metadata.fits)
    pooled = metadata.bases.get(POOLED_BASIS, BasisParts()).parts or 0
    seconds = metadata.training_seconds or float("nan")
    return (f"{fitted:,} own-curve part fits (split and refit) and {pooled:,} pooled parts in "
            f"{seconds:.1f} s of training: {fitted / seconds:.1f} fits/s, "
            f"{fitted / seconds / workers:.1f} per core")


def start_cluster(workers: int, env: Dict[str, str], folder: str) -> Tuple[str, List[Any]]:
    """A Dask scheduler and ``workers`` one-thread workers on loopback; address and processes."""
    scheduler_file = os.path.join(folder, "scheduler.json")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": folder}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", scheduler_file], **quiet)]
    deadline = time.time() + 60
    while not os.path.exists(scheduler_file) and time.time() < deadline:
        time.sleep(0.2)
    with open(scheduler_file) as handle:
        address = str(json.load(handle)["address"])
    processes += [subprocess.Popen(
        [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--no-dashboard",
         "--name", f"bench-{i}"], **quiet) for i in range(workers)]
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        client.wait_for_workers(workers, timeout=120)
    return address, processes


def catalogue(args: argparse.Namespace, env: Dict[str, str], extra: List[str]) -> bool:
    """The long-tailed catalogue scenario (and, with --dask, the largest on a cluster)."""
    points: List[Tuple[int, float, float]] = []
    ok = True
    for parts in args.parts:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
            if args.world == "shaped":
                write_shaped(open_store(folder),
                             shaped_world(parts, args.weekly_rows, args.weeks, 1), UNTIL)
            else:
                write_catalogue(open_store(folder),
                                catalogue_world(parts, args.weekly_rows, args.weeks, 1), UNTIL)
            label = (f"catalogue {parts:>7,} parts, {args.weekly_rows:,} rows a week, "
                     f"{args.weeks} weeks in the store")
            wall, tree = measured(label, folder, 1, env, extra, CATALOGUE_GOALS.get(parts),
                                  warm_up=False)
            if wall is None:
                ok = False
                continue
            local_sha = published_sha256(folder)
            print(f"  {label}: artefact sha256 {local_sha}; "
                  f"{fitting_rate(folder, args.n_jobs or os.cpu_count() or 1)}", flush=True)
            if points:
                before = points[-1]
                print(f"  growth since {before[0]:,} parts (x{parts / before[0]:g}): time "
                      f"x{wall / before[1]:.2f}, peak memory x{tree / before[2]:.2f}", flush=True)
            points.append((parts, wall, tree))
            if args.dask and parts == max(args.parts):
                ok = on_cluster(label, folder, env, extra, wall, local_sha) and ok
    return ok


def on_cluster(label: str, folder: str, env: Dict[str, str], extra: List[str], local_wall: float,
               local_sha: str) -> bool:
    """The same tranche on a two-worker Dask cluster: its time and artefact against the local."""
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as cluster_folder:
        address, processes = start_cluster(2, env, cluster_folder)
        try:
            wall, _ = measured(f"{label} on Dask (2 workers x 1 thread)", folder, 1, env,
                               extra + ["--dask-scheduler", address], None, warm_up=False)
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in processes:
                process.wait(30)
    if wall is None:
        return False
    same = published_sha256(folder) == local_sha
    print(f"  Dask: {fitting_rate(folder, 2)}", flush=True)
    print(f"  Dask {wall:.1f} s beside local {local_wall:.1f} s; artefact "
          f"{'identical' if same else 'DIFFERENT'} (sha256 {published_sha256(folder)})",
          flush=True)
    return same


def main() -> int:
    """Run the requested scenarios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=("rows", "codes", "catalogue"),
                        default=["rows", "codes"])
    parser.add_argument("--rows", type=int, nargs="+", default=sorted(ROW_GOALS),
                        help="tranche sizes over 5 product codes")
    parser.add_argument("--codes", type=int, nargs="+", default=[20, 200, 2000],
                        help="product code counts, 500 rows each")
    parser.add_argument("--parts", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                        help="catalogue sizes (parts) of the catalogue scenario")
    parser.add_argument("--weekly-rows", type=int, default=1_000_000,
                        help="orders a week in the catalogue scenario")
    parser.add_argument("--weeks", type=int, default=2,
                        help="weekly tranches in the store for the catalogue scenario (train_model "
                             "reads those within its --history-weeks, 13 by default)")
    parser.add_argument("--world", default="scaled", choices=("scaled", "shaped"),
                        help="the catalogue scenario's world: pipeline.simulate's (parts differ "
                             "by a factor) or testing_support/worlds.py's (parts differ in shape)")
    parser.add_argument("--dask", action="store_true",
                        help="run the largest catalogue again on a two-worker Dask cluster")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tranche size")
    parser.add_argument("--n-jobs", type=int, default=None,
                        help="passed to train_model (default: its own, the usable CPUs)")
    parser.add_argument("--cold", action="store_true",
                        help="never cache bytecode (PYTHONDONTWRITEBYTECODE=1): every run compiles "
                             "what has no cached bytecode yet")
    parser.add_argument("--no-report", action="store_true",
                        help="time the stage without writing its run report")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if args.cold:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT)
    extra = [] if args.n_jobs is None else ["--n-jobs", str(args.n_jobs)]
    extra += ["--no-report"] if args.no_report else []
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    ok = True
    if "rows" in args.scenarios:
        for rows in args.rows:
            with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
                write_tranches(open_store(folder), rows, weeks=2, seed=1, shape="saturating",
                               until=UNTIL)
                wall = measure(f"rows={rows:>9,} over 5 codes", folder, args.repeat, env, extra,
                               ROW_GOALS.get(rows))
                ok = ok and wall is not None
    if "codes" in args.scenarios:
        points: List[Tuple[int, float]] = []
        for codes in args.codes:
            with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
                write_many_codes(folder, codes, seed=1)
                wall = measure(f"codes={codes:>6,} x {ROWS_PER_CODE} rows", folder, 1, env, extra,
                               CODE_GOALS.get(codes))
                if wall is None:
                    ok = False
                    continue
                step = ""
                if points:
                    added = (wall - points[-1][1]) / (codes - points[-1][0])
                    step = f"; {1000 * added:.1f} ms per code added since {points[-1][0]:,} codes"
                points.append((codes, wall))
                print(f"codes={codes:>6,}: {1000 * wall / codes:.1f} ms per code{step}", flush=True)
        if len(points) > 2:
            steps = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(points, points[1:])]
            print("growth: ms per code added: " + " -> ".join(f"{1000 * x:.1f}" for x in steps)
                  + f" (ratio {steps[-1] / steps[0]:.2f}; 1 = linear)")
    if "catalogue" in args.scenarios:
        ok = catalogue(args, env, extra) and ok
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0 if ok else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
