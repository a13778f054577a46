"""Benchmark the prediction service against a bare ASGI floor, under the same load.

Starts, as subprocesses (uvicorn, uvloop + httptools, one worker, no access log),
``benchmarks/floor_app.py`` (reads and JSON-parses the body, answers a constant)
and the real service (``python -m pipeline.serve_model``) on a model published into
a temporary local store, then drives both with the same load: ``wrk`` when it is
installed (Debian: ``apt-get install wrk``), else a small Python load generator.
Prints req/s, p50 and p99 for both, their ratio against the goals (>= 60 % of the
floor, p99 <= 3 ms), and the median latency of a 10,000-row batch (goal <= 50 ms).

    python benchmarks/bench_serve.py [--seconds 10] [--connections 16] [--python-load]

The machine may be shared: run it more than once and compare the ratio, which is
measured in one run and so less noisy than the absolute figures.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.api.routes import BATCH_PATH, SINGLE_PATH  # noqa: E402
from pipeline.simulate import DEFAULT_PRODUCT_CODES  # noqa: E402
from testing_support.models import fitted_model, publish_model  # noqa: E402
from testing_support.servers import ServeProcess  # noqa: E402
from testing_support.stages import (  # noqa: E402
    free_port, stage_env, stop_process, wait_for_port,
)

BENCH_MODEL_ROWS = 5_000
BENCH_MODEL_SEED = 7
GOAL_RATIO = 0.60
GOAL_P99_MS = 3.0
GOAL_BATCH_MS = 50.0
BATCH_ROWS = 10_000
WRK_SCRIPT = """
local bodies = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
"""


class LoadResult(NamedTuple):
    """One load run's throughput and latency percentiles."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_us_per_request: float


# Command prefixes that pin the servers and the load generator to separate CPUs.
SERVER_CPU: List[str] = []
LOAD_CPU: List[str] = []


def request_bodies() -> List[bytes]:
    """Single-request bodies that vary the product code and order count."""
    return [
        json.dumps({"product_code": code, "orders_placed": 80 + 17 * i}).encode()
        for i, code in enumerate(DEFAULT_PRODUCT_CODES)
    ]


def start_floor(port: int) -> "subprocess.Popen[bytes]":
    """The bare floor app under uvicorn."""
    command = [
        sys.executable, "-m", "uvicorn", "benchmarks.floor_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--workers", "1", "--no-access-log", "--log-level", "warning", "--lifespan", "off",
    ]
    return subprocess.Popen(SERVER_CPU + command, cwd=REPO_ROOT, env=stage_env())


def start_service(
    port: int, store_url: str, request_log: str, extra: Sequence[str] = ()
) -> "subprocess.Popen[bytes]":
    """The real service, as the stage runs it, pinned like the floor."""
    return ServeProcess(store_url, stage_env({"TTD_REQUEST_LOG": request_log}),
                        args=["--log-level", "warning", *extra], prefix=SERVER_CPU,
                        port=port).process


def publish_bench_model(store_url: str) -> str:
    """Publish the model both serving benchmarks serve: fitted on a simulated 5,000-row tranche,
    with a stand-in p90 bound and trained ranges per code; its version."""
    model = fitted_model(BENCH_MODEL_SEED, BENCH_MODEL_ROWS, bounded=True)
    return publish_model(store_url, model).model_version


def run_wrk(port: int, seconds: float, connections: int, script: Path) -> LoadResult:
    """Drive a server with wrk and parse its summary."""
    command = LOAD_CPU + [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
        "-s", str(script),
        f"http://127.0.0.1:{port}{SINGLE_PATH}",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", output))
    requests = int(_find(r"(\d+) requests in", output))
    p50 = _wrk_ms(re.search(r"50%\s+([\d.]+)(us|ms|s)", output))
    p99 = _wrk_ms(re.search(r"99%\s+([\d.]+)(us|ms|s)", output))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    if socket_errors:
        print(f"  wrk socket errors: {socket_errors.group(1)}")
    return LoadResult(rps, p50, p99, int(errors.group(1)) if errors else 0, requests, math.nan)


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in the load generator's output:\n{text}")
    return match.group(1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk_ms(match: Optional["re.Match[str]"]) -> float:
    if match is None:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    return float(match.group(1)) * scale


def run_python_load(
    port: int, seconds: float, connections: int, bodies: Optional[List[bytes]] = None
) -> LoadResult:
    """Drive a server with keep-alive asyncio connections (when wrk is not installed)."""
    return asyncio.run(_python_load(port, seconds, connections, bodies or request_bodies()))


async def _python_load(
    port: int, seconds: float, connections: int, bodies: List[bytes]
) -> LoadResult:
    requests = [
        (
            f"POST {SINGLE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        for body in bodies
    ]
    latencies: List[float] = []
    errors = [0]
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        while time.perf_counter() < deadline:
            i += 1
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                errors[0] += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return LoadResult(
        len(ordered) / elapsed,
        ordered[len(ordered) // 2] * 1000.0,
        ordered[int(len(ordered) * 0.99)] * 1000.0,
        errors[0],
        len(ordered),
        math.nan,
    )


def batch_latency_ms(port: int, repeats: int) -> List[float]:
    """Round-trip times of a 10,000-row batch on one keep-alive connection (after 2 warm-ups)."""
    codes = DEFAULT_PRODUCT_CODES
    rows = [
        {"product_code": codes[i % len(codes)], "orders_placed": i % 300} for i in range(BATCH_ROWS)
    ]
    body = json.dumps(rows).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times: List[float] = []
    for attempt in range(repeats + 2):
        start = time.perf_counter()
        connection.request("POST", BATCH_PATH, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - start) * 1000.0
        answered = response.status == 200 and json.loads(payload)["est_hours_to_dispatch"]
        if not answered or len(answered) != BATCH_ROWS:
            raise RuntimeError(f"batch answered {response.status}: {payload[:200]!r}")
        if attempt >= 2:
            times.append(elapsed)
    connection.close()
    return times


def check_answers(port: int) -> None:
    """One request, to fail early if the server does not answer 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    connection.request("POST", SINGLE_PATH, request_bodies()[0], headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"port {port} answered {response.status}: {body[:200]!r}")


def load_once(port: int, seconds: float, connections: int, script: Optional[Path]) -> LoadResult:
    """One load run against a server."""
    if script is not None:
        return run_wrk(port, seconds, connections, script)
    return run_python_load(port, seconds, connections)


def interleaved(
    ports: Dict[str, int],
    pids: Dict[str, int],
    args: argparse.Namespace,
    script: Optional[Path],
) -> Dict[str, List[LoadResult]]:
    """Warm up each server, then alternate short rounds so both see the same background load.

    Each round also records the server's CPU time per request, a figure the other
    processes on a shared machine disturb much less than req/s.
    """
    results: Dict[str, List[LoadResult]] = {name: [] for name in ports}
    for port in ports.values():
        check_answers(port)
        load_once(port, args.warmup, args.connections, script)
    for _ in range(args.rounds):
        for name, port in ports.items():
            before = cpu_seconds(pids[name])
            result = load_once(port, args.seconds / args.rounds, args.connections, script)
            used = cpu_seconds(pids[name]) - before
            results[name].append(result._replace(
                cpu_us_per_request=used / max(result.requests, 1) * 1e6
            ))
    return results


def median_result(results: Sequence[LoadResult]) -> LoadResult:
    """Per-figure medians over rounds (errors summed)."""
    return LoadResult(
        statistics.median(r.requests_per_second for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.errors for r in results),
        sum(r.requests for r in results),
        statistics.median(r.cpu_us_per_request for r in results),
    )


def start_both(
    root: Path, store_url: str, ports: Dict[str, int]
) -> Dict[str, "subprocess.Popen[bytes]"]:
    """Start the floor and the service; wait until both listen."""
    processes = {
        "floor": start_floor(ports["floor"]),
        "service": start_service(ports["service"], store_url, str(root / "requests.log")),
    }
    try:
        for name, process in processes.items():
            wait_for_port(ports[name], process, 60.0)
    except Exception:
        for process in processes.values():
            stop_process(process, 15.0)
        raise
    return processes


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured load per server")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per server")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up load per server")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch-repeats", type=int, default=7)
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator")
    parser.add_argument(
        "--no-pin", action="store_true",
        help="let servers and wrk share every CPU (default: servers on CPU 0, wrk on CPU 1)",
    )
    return parser.parse_args(argv)


def report(results: Dict[str, List[LoadResult]], batch: List[float], logged: int) -> bool:
    """Print the comparison; whether every goal is met."""
    floor, service = median_result(results["floor"]), median_result(results["service"])
    ratios = [s.requests_per_second / f.requests_per_second
              for f, s in zip(results["floor"], results["service"])]
    ratio = service.requests_per_second / floor.requests_per_second
    print(f"{'':10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'CPU us/req':>12}"
          "   (medians of rounds)")
    for name, result in (("floor", floor), ("service", service)):
        print(f"{name:10}{result.requests_per_second:>10.0f}{result.p50_ms:>9.2f}"
              f"{result.p99_ms:>9.2f}{result.errors:>9}{result.cpu_us_per_request:>12.1f}")
    print("ratio per round: " + ", ".join(f"{r:.0%}" for r in ratios))
    print(f"ratio service/floor: {ratio:.0%} (goal >= {GOAL_RATIO:.0%}); "
          f"service p99 {service.p99_ms:.2f} ms (goal <= {GOAL_P99_MS:g} ms)")
    cpu_ratio = floor.cpu_us_per_request / service.cpu_us_per_request
    print(f"CPU-time ratio floor/service per request: {cpu_ratio:.0%} (the req/s ratio a "
          "dedicated core would give; less disturbed by other load)")
    median_batch = statistics.median(batch)
    print(f"{BATCH_ROWS}-row batch: median {median_batch:.1f} ms of {len(batch)} "
          f"(min {min(batch):.1f}, max {max(batch):.1f}; goal <= {GOAL_BATCH_MS:g} ms)")
    print(f"request log lines written by the service: {logged}")
    return (ratio >= GOAL_RATIO and service.p99_ms <= GOAL_P99_MS
            and median_batch <= GOAL_BATCH_MS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run both servers under the same load and print the comparison."""
    args = parse_args(argv)
    use_wrk = shutil.which("wrk") is not None and not args.python_load
    if not args.no_pin and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        SERVER_CPU[:] = ["taskset", "-c", "0"]
        LOAD_CPU[:] = ["taskset", "-c", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store_url = str(root / "store")
        publish_bench_model(store_url)
        script: Optional[Path] = None
        if use_wrk:
            script = root / "post.lua"
            bodies = ", ".join(f"'{body.decode()}'" for body in request_bodies())
            script.write_text(WRK_SCRIPT % bodies)
        load = "wrk -t1" if use_wrk else "python asyncio"
        if SERVER_CPU:
            load += " (servers pinned to CPU 0, load to CPU 1)"
        print(f"load: {load}, {args.connections} connections, {args.seconds:g} s per server "
              f"in {args.rounds} alternating rounds after {args.warmup:g} s warm-up; load "
              f"average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus (shared: noisy)")
        ports = {"floor": free_port(), "service": free_port()}
        processes = start_both(root, store_url, ports)
        try:
            pids = {name: process.pid for name, process in processes.items()}
            results = interleaved(ports, pids, args, script)
            batch = batch_latency_ms(ports["service"], args.batch_repeats)
        finally:
            for process in processes.values():
                stop_process(process, 15.0)
        log_path = root / "requests.log"
        logged = sum(1 for _ in log_path.open()) if log_path.exists() else 0
    met = report(results, batch, logged)
    print("goals met" if met else "goals NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
