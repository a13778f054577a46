"""Helpers for the serve_model process tests: models in a store, a real server, HTTP clients.

Not a test module: imported by tests/test_serve_model.py and tests/test_serve_runtime_*.py.
"""
from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.artefacts import make_model_version, read_pointer, sha256_hex
from pipeline.model_format import DispatchModel
from pipeline.simulate import simulate_tranche
from pipeline.store import open_store
from pipeline.training.estimator import fit_model
from tests.conftest import (
    PIPELINE_DIR, PYTHON, REPO_ROOT, free_port, publish_document, publish_unchecked,
)

SINGLE_PATH = "/api/v0.1/time_to_dispatch"
BATCH_PATH = "/api/v0.1/time_to_dispatch/batch"
Answer = Tuple[str, str, int, float]  # version, product code, orders, estimate
START_TIMEOUT_SECONDS = 30.0


def fitted_model(seed: int, rows: int = 1000) -> DispatchModel:
    """A model fitted on a simulated tranche; different seeds give different models."""
    tranche = simulate_tranche(rows, seed=seed)
    orders = tranche.orders_placed.astype(np.float64)
    return fit_model(tranche.product_code.tolist(), orders, tranche.hours_to_dispatch).model


def publish_model(store_url: str, model: DispatchModel, when: Optional[datetime] = None) -> str:
    """Publish a model as train_model would (pointer last); its model_version."""
    store = open_store(store_url)
    data = model.to_json()
    created = when or datetime.now(timezone.utc)
    version = make_model_version(created, sha256_hex(data))
    metadata: Dict[str, Any] = {
        "model_version": version,
        "model_sha256": sha256_hex(data),
        "trained_at": created.isoformat(),
        "tranche_key": "datasets/time_to_dispatch_2026-11-16T00:00:00.csv",
        "rows": 1000,
        "metrics": {"mae": 0.4},
        "product_codes": list(model.product_codes),
    }
    found = read_pointer(store)
    publish_document(store, data, metadata, created, None if found is None else found[1])
    return version


def publish_broken(store_url: str, how: str) -> str:
    """Point latest.json at a model that must be refused: 'checksum' or 'unreadable'."""
    store = open_store(store_url)
    version = f"20260101-000000-broken{how[:3]}"
    if how == "checksum":
        artefact = fitted_model(seed=99).to_json()
        recorded = sha256_hex(artefact + b" ")
    elif how == "unreadable":
        artefact = b"\x80\x04not a model at all"
        recorded = sha256_hex(artefact)
    else:
        raise ValueError(f"unknown breakage {how!r}")
    publish_unchecked(store, version, artefact, recorded)
    return version


def can_connect(port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on the loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def server_command(store_url: str, port: int, form: str, extra: Sequence[str]) -> List[str]:
    """The command line in either form: ``-m pipeline.serve_model`` or ``serve_model.py``."""
    if form == "module":
        head = [PYTHON, "-m", "pipeline.serve_model"]
    elif form == "script":
        head = [PYTHON, "serve_model.py"]
    else:
        raise ValueError(f"unknown form {form!r}")
    return head + [store_url, "--host", "127.0.0.1", "--port", str(port), *extra]


@dataclass
class PortWatch:
    """A thread that polls a port while a process runs and notes whether it ever opened."""

    port: int
    opened: bool = False
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Poll until stopped."""
        while not self.stop.is_set():
            if can_connect(self.port, timeout=0.05):
                self.opened = True
            time.sleep(0.01)


class RefusedRun:
    """A server expected to refuse to start, run in the background with its port watched."""

    def __init__(self, store_url: str, env: Dict[str, str], form: str = "module") -> None:
        port = free_port()
        self.watch = PortWatch(port)
        self.poller = threading.Thread(target=self.watch.run, daemon=True)
        self.poller.start()
        self.process = subprocess.Popen(
            server_command(store_url, port, form, []),
            cwd=PIPELINE_DIR if form == "script" else REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def result(self, timeout: float = 60.0) -> Tuple[int, str, bool]:
        """Wait for the exit: its code, everything printed, whether the port ever opened."""
        try:
            output, _ = self.process.communicate(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.watch.stop.set()
            self.poller.join()
        return self.process.returncode, output, self.watch.opened


class ServerProcess:
    """A real serve_model process on a free loopback port, its output in a file."""

    def __init__(
        self,
        store_url: str,
        env: Dict[str, str],
        log_dir: Path,
        form: str = "script",
        extra: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"serve-{self.port}.log"
        self._log = open(self.log_path, "w")
        cwd = PIPELINE_DIR if form == "script" else REPO_ROOT
        self.process = subprocess.Popen(
            server_command(store_url, self.port, form, extra),
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_listening(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Block until the port accepts connections; fail with the log if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.output()}")
            if can_connect(self.port):
                return
            time.sleep(0.02)
        raise AssertionError(f"server did not listen within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        """Everything the process has logged so far."""
        self._log.flush()
        return self.log_path.read_text()

    def terminate(self) -> float:
        """Send SIGTERM; the monotonic time it was sent."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        return sent

    def close(self) -> None:
        """Make sure the process is gone (killing it if a test left it running)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    headers: Optional[Dict[str, str]] = None,
) -> Tuple[int, Any, Dict[str, str]]:
    """One request on a (keep-alive) connection: status, parsed JSON body, headers."""
    payload = None if body is None else json.dumps(body).encode()
    sent_headers = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=payload, headers=sent_headers)
    response = conn.getresponse()
    data = response.read()
    parsed = json.loads(data) if data else None
    return response.status, parsed, {k.lower(): v for k, v in response.getheaders()}


def get_json(port: int, path: str) -> Tuple[int, Any]:
    """A GET on a fresh connection: status and parsed JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        status, body, _ = request(conn, "GET", path)
        return status, body
    finally:
        conn.close()


@dataclass
class Tally:
    """What client threads saw: answers by version, failures (with reasons), connections."""

    answered: int = 0
    failures: List[str] = field(default_factory=list)
    versions: Dict[str, int] = field(default_factory=dict)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, version: str) -> None:
        """Count an answered request and the version that answered it."""
        with self.lock:
            self.answered += 1
            self.versions[version] = self.versions.get(version, 0) + 1

    def fail(self, reason: str) -> None:
        """Count a failed request."""
        with self.lock:
            self.failures.append(reason)


def keep_asking(port: int, rows: List[Dict[str, Any]], stop: threading.Event, tally: Tally,
                seen: Optional[List[Answer]] = None) -> None:
    """Alternate single and 20-row batch requests on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    index = 0
    while not stop.is_set():
        index += 1
        batch = rows[index % 50:index % 50 + 20]
        try:
            if index % 2:
                row = batch[0]
                status, body, _ = request(conn, "POST", SINGLE_PATH, row)
                pairs = [(row, body.get("est_hours_to_dispatch"))] if status == 200 else []
            else:
                status, body, _ = request(conn, "POST", BATCH_PATH, batch)
                pairs = list(zip(batch, body.get("est_hours_to_dispatch", [])))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            tally.fail(repr(exc))
            conn.close()
            continue
        if status != 200:
            tally.fail(f"{status}: {body}")
            continue
        tally.add(body["model_version"])
        if seen is not None:
            seen.extend((body["model_version"], r["product_code"], r["orders_placed"], estimate)
                        for r, estimate in pairs)
    conn.close()


def rows_for(model: DispatchModel, count: int, seed: int) -> List[Dict[str, Any]]:
    """Valid request rows for a model's product codes."""
    rng = np.random.default_rng(seed)
    codes = model.product_codes
    return [
        {"product_code": codes[int(i) % len(codes)], "orders_placed": int(o)}
        for i, o in zip(rng.integers(0, len(codes), count), rng.integers(0, 400, count))
    ]


def stage_env_for(extra: Dict[str, str]) -> Dict[str, str]:
    """The stage environment with Python's output unbuffered, for live logs."""
    from tests.conftest import stage_env

    env = stage_env(extra)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TTD_API_KEY", None)
    return env


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll a predicate until it holds or the timeout passes; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
