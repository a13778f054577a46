"""Stores to test against: moto's S3 server over real HTTP, a fault-injecting proxy in front
of it, and what a run leaves in a store."""
from __future__ import annotations

import hashlib
import http.client
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from pipeline.store import Store
from testing_support.stages import PYTHON, free_port, stop_process, wait_for_port

MOTO_START_SECONDS = 30.0


@contextmanager
def moto_server(own_process: bool = False) -> Iterator[str]:
    """moto's S3 server on a free loopback port, reached over real HTTP; yields its endpoint.

    In a thread of this process, or with ``own_process`` a process of its own (for a long run
    whose clients must not share this process's interpreter).
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if not own_process:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield endpoint
        finally:
            server.stop()
        return
    process = subprocess.Popen([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, MOTO_START_SECONDS)
        yield endpoint
    finally:
        stop_process(process)


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
