"""Helpers for the reliability tests: a fault-injecting S3 proxy, store snapshots, a model.

Not a test module: imported by tests/test_reliability_*.py and benchmarks/.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import numpy as np
import pytest

from pipeline.artefacts import LoadedModel, Pointer, make_model_version, publish, read_pointer
from pipeline.artefacts import sha256_hex
from pipeline.metadata import Metadata
from pipeline.model_format import Curve, DispatchModel
from pipeline.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
FULL_ENV = "RELIABILITY_FULL"
full_only = pytest.mark.skipif(
    os.environ.get(FULL_ENV) != "1",
    reason=f"slow variant: run by benchmarks/reliability_full.py ({FULL_ENV}=1)",
)
SINGLE_PATH = "/api/v0.1/time_to_dispatch"
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class FaultPlan:
    """What the proxy does to the requests it sees (all counters guarded by ``lock``).

    Among the requests of ``only_methods`` (all when empty): the first ``pass_first``
    pass, then ``fail_first`` get 503 SlowDown (all with ``fail_all``), or the next
    ``delay_first`` are delayed by ``delay_seconds``; the rest pass.
    """

    pass_first: int = 0
    fail_first: int = 0
    fail_all: bool = False
    delay_first: int = 0
    delay_seconds: float = 0.0
    delay_after_forward: bool = False
    only_methods: Tuple[str, ...] = ()
    seen: List[Tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, **changes: object) -> None:
        """Start a new plan, forgetting every request seen."""
        with self.lock:
            for name, value in changes.items():
                setattr(self, name, value)
            self.seen.clear()

    def count(self, method: Optional[str] = None) -> int:
        """How many requests reached the proxy (of one method, or all)."""
        with self.lock:
            return sum(1 for m, _ in self.seen if method is None or m == method)

    def decide(self, method: str, path: str) -> Tuple[str, int]:
        """Record a request and say what to do: ('fail'|'delay'|'pass', its index)."""
        with self.lock:
            self.seen.append((method, path))
            if self.only_methods and method not in self.only_methods:
                return "pass", -1
            index = sum(1 for m, _ in self.seen if not self.only_methods or m in self.only_methods)
            if index <= self.pass_first:
                return "pass", index
            if self.fail_all or index <= self.pass_first + self.fail_first:
                return "fail", index
            if index <= self.pass_first + self.delay_first:
                return "delay", index
            return "pass", index


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that injects 503s and delays.

    A delayed request is held before it is forwarded (the store never sees it in time)
    or, with ``delay_after_forward``, applied and its response held (a lost response).
    """

    def __init__(self, upstream: str) -> None:
        self.plan = FaultPlan()
        target = urlsplit(upstream)
        plan = self.plan

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action, _ = plan.decide(self.command, self.path)
                if action == "fail":
                    self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                if action == "delay" and not plan.delay_after_forward:
                    time.sleep(plan.delay_seconds)
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    passed = {
                        k: v for k, v in response.getheaders()
                        if k.lower() not in ("connection", "transfer-encoding", "content-length")
                    }
                finally:
                    connection.close()
                if action == "delay" and plan.delay_after_forward:
                    time.sleep(plan.delay_seconds)
                self._reply(response.status, passed, data)

            def _reply(self, status: int, headers: Dict[str, str], data: bytes) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def is_run_record(key: str) -> bool:
    """Whether a key is a record a run leaves whatever its outcome (report, realised accuracy)."""
    return key.startswith("reports/") or "/reports/" in key or "/realised/" in key


def snapshot(store: Store) -> Dict[str, str]:
    """The sha256 of every object in a store but the runs' records, by key."""
    return {key: hashlib.sha256(store.read_bytes(key)).hexdigest()
            for key in store.list_keys("") if not is_run_record(key)}


def simple_model(
    scale: float = 1.0, codes: Tuple[str, ...] = ("SKU001", "SKU002")
) -> DispatchModel:
    """A small valid model whose estimates grow with ``scale`` (to tell versions apart)."""
    return DispatchModel({
        code: Curve((0.0, 100.0, 200.0), (scale * (1.0 + i), scale * (3.0 + i), scale * (4.0 + i)))
        for i, code in enumerate(codes)
    })


def publish_model(
    store: Store, model: DispatchModel, when: Optional[datetime] = None, extra: str = ""
) -> Pointer:
    """Publish a model through artefacts.publish, as train_model does, over the current pointer."""
    when = when or datetime.now(timezone.utc)
    data = model.to_json()
    digest = sha256_hex(data)
    version = make_model_version(when, digest)
    metadata = Metadata.model_validate({
        "model_version": version,
        "model_sha256": digest,
        "created_at": when.isoformat(),
        "product_codes": list(model.product_codes),
        "note": extra,
    })
    found = read_pointer(store)
    return publish(store, data, metadata, when, None if found is None else found[1])


def assert_verifies(loaded: LoadedModel, pointer: Pointer) -> None:
    """A loaded model is the one a pointer names and predicts finite numbers."""
    assert loaded.pointer == pointer
    assert loaded.metadata.model_version == pointer.model_version
    code = loaded.model.product_codes[0]
    assert np.all(np.isfinite(loaded.model.predict([code], [10.0])))


class MarkerPayload:
    """A pickle payload: unpickling it creates a marker file (the proof that code ran)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Tuple[object, Tuple[str, str]]:
        return (open, (self.path, "w"))


def malicious_pickle(marker: str) -> bytes:
    """Pickle bytes whose loading would create ``marker``."""
    import pickle

    return pickle.dumps(MarkerPayload(marker))


def random_bytes(seed: int, size: int = 512) -> bytes:
    """Reproducible arbitrary bytes."""
    return np.random.default_rng(seed).bytes(size)


def plant_hostile(store: Store, content: bytes, checksum: str, version: str) -> Pointer:
    """An attacker with write access swings the pointer to a new version holding ``content``.

    ``checksum="matching"``: the pointer and metadata record the hostile content's
    sha256 (every checksum verifies). ``"stale"``: they record a genuine model's sha256,
    so the content fails verification.
    """
    import json

    if checksum == "matching":
        recorded = sha256_hex(content)
    elif checksum == "stale":
        recorded = sha256_hex(simple_model(7.0).to_json())
    else:
        raise ValueError(f"checksum must be 'matching' or 'stale', not {checksum!r}")
    model_key, metadata_key = f"models/{version}/model.json", f"models/{version}/metadata.json"
    metadata = json.dumps({"model_version": version, "model_sha256": recorded}).encode()
    store.write_bytes(model_key, content)
    store.write_bytes(metadata_key, metadata)
    pointer = Pointer(version, model_key, recorded, metadata_key, sha256_hex(metadata),
                      datetime.now(timezone.utc).isoformat())
    store.write_bytes("models/latest.json", pointer.to_json())
    return pointer


def replace_in_place(store: Store, content: bytes, checksum: str) -> None:
    """Overwrite the current artefact; with ``"matching"`` also fix up metadata and pointer."""
    import json

    found = read_pointer(store)
    assert found is not None
    pointer = found[0]
    store.write_bytes(pointer.model_key, content)
    if checksum == "stale":
        return
    metadata = json.loads(store.read_bytes(pointer.metadata_key))
    metadata["model_sha256"] = sha256_hex(content)
    metadata_bytes = json.dumps(metadata).encode()
    store.write_bytes(pointer.metadata_key, metadata_bytes)
    fixed = Pointer(pointer.model_version, pointer.model_key, sha256_hex(content),
                    pointer.metadata_key, sha256_hex(metadata_bytes), pointer.published_at)
    store.write_bytes("models/latest.json", fixed.to_json())


def stage_command(module: str, args: Sequence[str], faults: Sequence[str] = ()) -> List[str]:
    """``python -m MODULE ARGS``, through the fault-planting runner when faults are asked."""
    if not faults:
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-m", "tests.reliability_runner", *faults, "--", module, *args]


def stage_environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a stage subprocess: repo on PYTHONPATH, unbuffered, no API key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TTD_"))}
    env.update(extra or {})
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_stage(
    module: str, args: Sequence[str], env: Dict[str, str], faults: Sequence[str] = (),
    timeout: float = 60.0,
) -> "subprocess.CompletedProcess[str]":
    """Run a stage to completion from the repo root; its exit code and output."""
    return subprocess.run(
        stage_command(module, args, faults), cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, timeout=timeout,
    )


def error_lines(output: str) -> List[str]:
    """The lines of a stage's log at ERROR level."""
    return [line for line in output.splitlines() if " ERROR " in f" {line} " or
            '"level": "ERROR"' in line or '"levelname": "ERROR"' in line]


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A real serve_model process on a loopback port, with its log in a file."""

    def __init__(
        self, store_url: str, env: Dict[str, str], log_dir: Path, refresh_seconds: float = 0.0,
        faults: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"serve-{self.port}.log"
        self._log = open(self.log_path, "w")
        args = [store_url, "--host", "127.0.0.1", "--port", str(self.port),
                "--model-refresh-seconds", str(refresh_seconds), "--drain-seconds", "0"]
        self.process = subprocess.Popen(
            stage_command("pipeline.serve_model", args, faults), cwd=REPO_ROOT, env=env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_listening(self, timeout: float = 30.0) -> "Service":
        """Block until the port accepts connections; fail with the log if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve_model exited {self.process.returncode}:\n"
                                     f"{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"serve_model did not listen within {timeout} s:\n{self.output()}")

    def call(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        """One request on a fresh connection: status and parsed JSON."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=payload,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else None
        finally:
            connection.close()

    def served_version(self, product_code: str = "SKU001") -> str:
        """The model_version a prediction comes back with (asserting it succeeded)."""
        status, body = self.call("POST", SINGLE_PATH,
                                 {"product_code": product_code, "orders_placed": 10})
        assert status == 200, body
        return str(body["model_version"])

    def output(self) -> str:
        """Everything the process has logged so far."""
        self._log.flush()
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 15.0, after: int = 0) -> bool:
        """Whether ``text`` appears in the log (past character ``after``) within the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output()[after:]:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Stop the process (SIGKILL if it does not stop on SIGTERM within 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
