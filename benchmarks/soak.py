"""Soak the prediction service (issue 5, item 7): ~80 % of capacity for 60 s, nothing gives.

Publishes a model into a temporary local store, starts the real service
(``python -m pipeline.serve_model``), measures its capacity with a short closed-loop
``wrk`` run (16 connections, as bench_serve.py), then holds an open-loop load of
``--load`` times that rate (or ``--rate`` req/s) for ``--seconds``, pacing wrk with a
per-request delay over enough connections. Reads the server's resident memory
(VmRSS in /proc/<pid>/status) after the warm-up, every few seconds, and at the end.

Prints the achieved rate, p50/p99 latency, errors (socket errors and non-2xx) and the
RSS growth, and exits 1 unless: zero errors, p99 <= ``--p99-ms``, RSS growth < 10 %.

    python benchmarks/soak.py                    # the full 60 s soak
    python benchmarks/soak.py --seconds 5        # a quick smoke run
    python benchmarks/soak.py --rate 4000        # skip the capacity measurement

Needs wrk (Debian: ``apt-get install wrk``). The machine may be shared: the absolute
figures are noisy, the error count and memory growth are not.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_serve import publish_bench_model  # noqa: E402
from pipeline.simulate import DEFAULT_PRODUCT_CODES  # noqa: E402
from testing_support.servers import ServeProcess  # noqa: E402
from testing_support.stages import stage_env  # noqa: E402

SINGLE_PATH = "/api/v0.1/time_to_dispatch"
CAPACITY_CONNECTIONS = 16
PACING_DELAY_MS = 10
MAX_CONNECTIONS = 2000
RSS_SAMPLE_SECONDS = 5.0
MAX_RSS_GROWTH = 0.10
WRK_SCRIPT = """
local bodies = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[i])
end
%s
"""
WRK_DELAY = "delay = function() return %d end"


class LoadResult(NamedTuple):
    """One wrk run: requests answered, their rate, latency percentiles and errors."""

    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


class SoakFigures(NamedTuple):
    """Everything the soak measured."""

    capacity: Optional[float]
    target_rate: float
    connections: int
    load: LoadResult
    rss_start_kib: int
    rss_end_kib: int
    rss_samples_kib: List[int]

    @property
    def rss_growth(self) -> float:
        """Relative growth of resident memory from after the warm-up to the end."""
        return (self.rss_end_kib - self.rss_start_kib) / self.rss_start_kib


def start_server(store_url: str, folder: Path) -> ServeProcess:
    """The real service (its request log to /dev/null, its own log to a file), listening."""
    server = ServeProcess(store_url, stage_env({"TTD_REQUEST_LOG": os.devnull}), folder)
    return server.wait_listening(60.0)


def rss_kib(pid: int) -> int:
    """The resident set size of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def wrk_script(folder: Path, delay_ms: Optional[int]) -> Path:
    """A wrk Lua script cycling over single requests, paced by a delay when given."""
    bodies = [json.dumps({"product_code": code, "orders_placed": 40 + 23 * i})
              for i, code in enumerate(DEFAULT_PRODUCT_CODES * 4)]
    quoted = ", ".join(json.dumps(body) for body in bodies)
    pacing = "" if delay_ms is None else WRK_DELAY % delay_ms
    path = folder / ("paced.lua" if delay_ms else "closed.lua")
    path.write_text(WRK_SCRIPT % (quoted, SINGLE_PATH, pacing))
    return path


def run_wrk(port: int, seconds: float, connections: int, script: Path) -> LoadResult:
    """Drive the server with one wrk thread and parse its summary."""
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout
    requests = re.search(r"(\d+) requests in", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if requests is None or rate is None:
        raise RuntimeError(f"cannot parse wrk's output:\n{output}")
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return LoadResult(int(requests.group(1)), float(rate.group(1)),
                      _ms(output, "50%"), _ms(output, "99%"), errors)


def _ms(output: str, percentile: str) -> float:
    match = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)\b", output)
    if match is None:
        return math.nan
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    return float(match.group(1)) * scale


def paced_connections(rate: float, latency_ms: float) -> int:
    """Connections that, each waiting PACING_DELAY_MS between requests, offer ``rate``."""
    per_connection = 1000.0 / (PACING_DELAY_MS + max(latency_ms, 0.0))
    return max(1, min(MAX_CONNECTIONS, round(rate / per_connection)))


def sample_rss(pid: int, stop: threading.Event, samples: List[int]) -> None:
    """Read the server's RSS every few seconds until stopped."""
    while not stop.wait(RSS_SAMPLE_SECONDS):
        samples.append(rss_kib(pid))


def soak(port: int, pid: int, folder: Path, seconds: float, rate: Optional[float],
         load: float, capacity_seconds: float) -> SoakFigures:
    """Warm up (measuring capacity unless a rate is given), calibrate the pacing, then soak."""
    closed = wrk_script(folder, None)
    warm = run_wrk(port, capacity_seconds, CAPACITY_CONNECTIONS, closed)
    capacity = None if rate is not None else warm.requests_per_second
    target = rate if rate is not None else load * warm.requests_per_second
    paced = wrk_script(folder, PACING_DELAY_MS)
    connections = paced_connections(target, warm.p50_ms)
    pilot = run_wrk(port, 2, connections, paced)
    if pilot.requests_per_second > 0:
        connections = max(1, min(MAX_CONNECTIONS,
                                 round(connections * target / pilot.requests_per_second)))
    start = rss_kib(pid)
    samples: List[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(pid, stop, samples), daemon=True)
    sampler.start()
    try:
        result = run_wrk(port, seconds, connections, paced)
    finally:
        stop.set()
        sampler.join()
    return SoakFigures(capacity, target, connections, result, start, rss_kib(pid), samples)


def report(figures: SoakFigures, seconds: float, p99_bound_ms: float) -> bool:
    """Print the figures and each verdict; whether the soak passed."""
    load = figures.load
    if figures.capacity is not None:
        print(f"capacity (closed loop, {CAPACITY_CONNECTIONS} connections): "
              f"{figures.capacity:,.0f} req/s")
    print(f"soak: {seconds:g} s at a target of {figures.target_rate:,.0f} req/s over "
          f"{figures.connections} paced connections")
    print(f"  achieved {load.requests_per_second:,.0f} req/s ({load.requests:,} requests), "
          f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, errors {load.errors}")
    trail = ", ".join(f"{kib / 1024:.1f}" for kib in figures.rss_samples_kib)
    print(f"  RSS {figures.rss_start_kib / 1024:.1f} MiB after warm-up -> "
          f"{figures.rss_end_kib / 1024:.1f} MiB at the end ({figures.rss_growth:+.1%}); "
          f"every {RSS_SAMPLE_SECONDS:g} s: [{trail}]")
    checks = [
        ("zero errors", load.errors == 0),
        (f"p99 <= {p99_bound_ms:g} ms", load.p99_ms <= p99_bound_ms),
        (f"RSS growth < {MAX_RSS_GROWTH:.0%}", figures.rss_growth < MAX_RSS_GROWTH),
        ("requests answered", load.requests > 0),
    ]
    for name, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return all(ok for _, ok in checks)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The soak's knobs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="soak duration")
    parser.add_argument("--rate", type=float, help="offered req/s (default: --load x capacity)")
    parser.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=5.0,
                        help="closed-loop warm-up that measures capacity")
    parser.add_argument("--p99-ms", type=float, default=10.0, help="bound on p99 latency")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the soak against a fresh server; 0 when every check passed."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        store = folder / "store"
        store.mkdir()
        version = publish_bench_model(str(store))
        server = start_server(str(store), folder)
        try:
            print(f"service pid {server.process.pid}, model {version}, port {server.port}")
            figures = soak(server.port, server.process.pid, folder, args.seconds, args.rate,
                           args.load, args.capacity_seconds)
        finally:
            code = server.stop(15.0)
            server.close()
        passed = report(figures, args.seconds, args.p99_ms)
        print(f"server exit code after SIGTERM: {code}")
    return 0 if passed and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
