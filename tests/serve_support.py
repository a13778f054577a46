"""Helpers for the serve_model process tests: a refused start watched, client threads.

Not a test module: imported by tests/test_serve_*.py. Models, stores and the server process
come from ``testing_support`` (shared with the benchmarks).
"""
from __future__ import annotations

import http.client
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from pipeline.api.routes import BATCH_PATH, SINGLE_PATH
from pipeline.artefacts import sha256_hex
from pipeline.model_format import DispatchModel
from pipeline.store import open_store
from testing_support.models import fitted_model, plant_model
from testing_support.servers import request, serve_command
from testing_support.stages import PIPELINE_DIR, REPO_ROOT, can_connect, free_port

Answer = Tuple[str, str, int, float]  # version, product code, orders, estimate


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
    plant_model(store, version, artefact, recorded)
    return version


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
            serve_command(store_url, port, form),
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
