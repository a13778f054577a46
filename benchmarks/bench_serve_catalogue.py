"""Serve a catalogue of 100,000 parts beside the five-part service: start, memory, load, refresh.

Publishes a synthetic model of ``--parts`` parts (format 3: bounds, ranges, bases and a
catalogue curve) and the five-part model of ``bench_serve.py`` into temporary stores,
starts ``python -m pipeline.serve_model`` on each (servers pinned to CPU 0, load to CPU 1
when ``taskset`` exists), and prints:

- start to open port and resident memory (now and peak) of each service;
- single-prediction req/s and p99 at ``--connections`` connections, the two services in
  alternating rounds (goal: the big one within 10% of the small one);
- a refresh of the big service to another model of as many parts under that load
  (goals: 0 failed requests, p99 <= 10 ms) and how long the new model took to be served;
- the sizes of an unknown-part 422, ``/openapi.json`` and ``/api/v0.1/model``
  (goals: <= 4 KB, 64 KB, 64 KB).

    python benchmarks/bench_serve_catalogue.py [--parts 100000] [--seconds 12] [--rounds 4]

Load comes from ``wrk`` when installed, else a Python asyncio generator. The machine may
be shared: the ratio, measured in one run, is the figure to compare.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import bench_serve  # noqa: E402
from benchmarks.bench_serve import (  # noqa: E402
    LoadResult, cpu_seconds, median_result, publish_bench_model, run_python_load, start_service,
)
from pipeline.simulate import DEFAULT_PRODUCT_CODES  # noqa: E402
from testing_support.models import catalogue_artefact, publish_model  # noqa: E402
from testing_support.stages import free_port, stop_process, wait_for_port  # noqa: E402

GOAL_START_SECONDS = 3.0
GOAL_RSS_MB = 250.0
GOAL_RATIO = 0.90
GOAL_REFRESH_P99_MS = 10.0
GOAL_422_BYTES = 4096
GOAL_DOC_BYTES = 65536
SINGLE_PATH = "/api/v0.1/time_to_dispatch"


class Started(NamedTuple):
    """A service started for the benchmark."""

    process: "subprocess.Popen[bytes]"
    port: int
    seconds_to_port: float


def bodies_for(codes: Sequence[str]) -> List[bytes]:
    """Single-request bodies cycling through some codes and order counts."""
    return [json.dumps({"product_code": code, "orders_placed": 80 + 17 * (i % 13)}).encode()
            for i, code in enumerate(codes)]


def start(store_url: str, root: Path, name: str, extra: Sequence[str] = ()) -> Started:
    """Start a service and time it from the command to an open port."""
    port = free_port()
    began = time.perf_counter()
    process = start_service(port, store_url, str(root / f"{name}.log"), extra)
    wait_for_port(port, process, 120.0)
    return Started(process, port, time.perf_counter() - began)


def memory_mb(pid: int) -> Tuple[float, float]:
    """Resident and peak resident memory of a process, in MB (Linux /proc)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def fetch(port: int, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, bytes]:
    """Status and body of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def load(port: int, seconds: float, connections: int, bodies: List[bytes]) -> LoadResult:
    """One load run with the given bodies (wrk when installed, else Python)."""
    if shutil.which("wrk"):
        script = Path(tempfile.mkdtemp()) / "post.lua"
        script.write_text(bench_serve.WRK_SCRIPT % ", ".join(f"'{b.decode()}'" for b in bodies))
        return bench_serve.run_wrk(port, seconds, connections, script)
    return run_python_load(port, seconds, connections, bodies)


def served_version(port: int) -> str:
    """The model version /health reports."""
    return str(json.loads(fetch(port, "GET", "/health")[1])["model_version"])


def refresh_under_load(
    port: int, store_url: str, artefact: bytes, args: argparse.Namespace, bodies: List[bytes]
) -> Tuple[LoadResult, Optional[float]]:
    """Load the service while another model is published; the load and the swap's delay."""
    found: Dict[str, LoadResult] = {}
    runner = threading.Thread(target=lambda: found.update(
        result=load(port, args.refresh_seconds, args.connections, bodies)))
    runner.start()
    time.sleep(1.0)
    published = time.perf_counter()
    version = publish_model(store_url, artefact).model_version
    delay: Optional[float] = None
    while runner.is_alive():
        if delay is None and served_version(port) == version:
            delay = time.perf_counter() - published
        time.sleep(0.1)
    runner.join()
    return found["result"], delay


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=12.0, help="measured load per server")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per server")
    parser.add_argument("--refresh-seconds", type=float, default=12.0,
                        help="load during the refresh (the new model is published after 1 s)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and load")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build, start, load and refresh; print the figures against the goals."""
    args = parse_args(argv)
    if not args.no_pin and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        bench_serve.SERVER_CPU[:] = ["taskset", "-c", "0"]
        bench_serve.LOAD_CPU[:] = ["taskset", "-c", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small_url, big_url = str(root / "small"), str(root / "big")
        publish_bench_model(small_url)
        publish_model(big_url, catalogue_artefact(args.parts, seed=1))
        successor = catalogue_artefact(args.parts, seed=2)
        print(f"{args.parts} parts: artefact {len(successor) / 1e6:.1f} MB; load "
              f"{'wrk' if shutil.which('wrk') else 'python asyncio'}, {args.connections} "
              f"connections; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
        services = {
            "5 parts": start(small_url, root, "small"),
            f"{args.parts} parts": start(big_url, root, "big", ["--model-refresh-seconds", "0.5"]),
        }
        big = services[f"{args.parts} parts"]
        codes = {"5 parts": list(DEFAULT_PRODUCT_CODES),
                 f"{args.parts} parts": [f"P{(i * 7919) % args.parts:06d}" for i in range(500)]}
        try:
            results: Dict[str, List[LoadResult]] = {name: [] for name in services}
            for name, service in services.items():
                load(service.port, 2.0, args.connections, bodies_for(codes[name]))
            for _ in range(args.rounds):
                for name, service in services.items():
                    before = cpu_seconds(service.process.pid)
                    found = load(service.port, args.seconds / args.rounds, args.connections,
                                 bodies_for(codes[name]))
                    used = cpu_seconds(service.process.pid) - before
                    results[name].append(found._replace(
                        cpu_us_per_request=used / max(found.requests, 1) * 1e6))
            memory = {name: memory_mb(s.process.pid) for name, s in services.items()}
            sizes = {
                "unknown-part 422": fetch(big.port, "POST", SINGLE_PATH,
                                          b'{"product_code": "P01234", "orders_placed": 5}')[1],
                "/openapi.json": fetch(big.port, "GET", "/openapi.json")[1],
                "/api/v0.1/model": fetch(big.port, "GET", "/api/v0.1/model")[1],
            }
            refresh, delay = refresh_under_load(
                big.port, big_url, successor, args, bodies_for(codes[f"{args.parts} parts"])
            )
            after = memory_mb(big.process.pid)
        finally:
            for service in services.values():
                stop_process(service.process, 15.0)
    return report(services, memory, results, sizes, refresh, delay, after)


def report(
    services: Dict[str, Started],
    memory: Dict[str, Tuple[float, float]],
    results: Dict[str, List[LoadResult]],
    sizes: Dict[str, bytes],
    refresh: LoadResult,
    delay: Optional[float],
    after: Tuple[float, float],
) -> int:
    """Print every figure and whether its goal is met."""
    small, big = list(services)
    medians = {name: median_result(found) for name, found in results.items()}
    print(f"{'':14}{'start s':>9}{'RSS MB':>8}{'peak MB':>9}{'req/s':>9}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'non-2xx':>9}{'CPU us/req':>12}")
    for name, service in services.items():
        m = medians[name]
        print(f"{name:14}{service.seconds_to_port:>9.2f}{memory[name][0]:>8.0f}"
              f"{memory[name][1]:>9.0f}{m.requests_per_second:>9.0f}{m.p50_ms:>8.2f}"
              f"{m.p99_ms:>8.2f}{m.errors:>9}{m.cpu_us_per_request:>12.1f}")
    ratios = [b.requests_per_second / s.requests_per_second
              for s, b in zip(results[small], results[big])]
    ratio = medians[big].requests_per_second / medians[small].requests_per_second
    p99_ratio = medians[big].p99_ms / medians[small].p99_ms
    print("throughput ratio per round: " + ", ".join(f"{r:.0%}" for r in ratios))
    cpu_ratio = medians[small].cpu_us_per_request / medians[big].cpu_us_per_request
    print(f"CPU time per request, {small}/{big}: {cpu_ratio:.0%} (the throughput ratio a "
          "dedicated core would give; less disturbed by other load)")
    print(f"throughput {big}/{small}: {ratio:.0%} (goal >= {GOAL_RATIO:.0%}); "
          f"p99 {p99_ratio:.0%} of the small service's (goal <= {2 - GOAL_RATIO:.0%})")
    print(f"refresh under load: {refresh.requests} requests, {refresh.errors} failed, "
          f"p50 {refresh.p50_ms:.2f} ms, p99 {refresh.p99_ms:.2f} ms "
          f"(goals: 0 failed, p99 <= {GOAL_REFRESH_P99_MS:g} ms); new model served "
          f"{'never' if delay is None else f'{delay:.1f} s'} after it was published; "
          f"RSS then {after[0]:.0f} MB (peak {after[1]:.0f} MB)")
    for name, body in sizes.items():
        print(f"{name}: {len(body)} bytes")
    met = (
        services[big].seconds_to_port <= GOAL_START_SECONDS
        and max(memory[big][0], after[0]) <= GOAL_RSS_MB
        and ratio >= GOAL_RATIO and p99_ratio <= 2 - GOAL_RATIO
        and refresh.errors == 0 and refresh.p99_ms <= GOAL_REFRESH_P99_MS and delay is not None
        and len(sizes["unknown-part 422"]) <= GOAL_422_BYTES
        and len(sizes["/openapi.json"]) <= GOAL_DOC_BYTES
        and len(sizes["/api/v0.1/model"]) <= GOAL_DOC_BYTES
    )
    print("goals met" if met else "goals NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
