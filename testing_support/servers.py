"""A real serve_model process on a loopback port, and requests to it."""
from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

from pipeline.api.routes import SINGLE_PATH
from testing_support.stages import (
    PIPELINE_DIR, PYTHON, REPO_ROOT, free_port, stage_command, stage_env, stop_process,
    wait_for_port,
)

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def refreshing(seconds: float) -> List[str]:
    """serve_model's options to poll for a new model every ``seconds`` and stop at once."""
    return ["--model-refresh-seconds", str(seconds), "--drain-seconds", "0"]


def serve_command(
    store_url: str, port: int, form: str = "module", args: Sequence[str] = (),
    faults: Sequence[str] = (),
) -> List[str]:
    """serve_model's command line on ``port``: ``-m pipeline.serve_model`` (from the repo root),
    or ``serve_model.py`` (from pipeline/, as Bodywork runs it); faults go through
    ``testing_support.stage_faults``."""
    served = [store_url, "--host", "127.0.0.1", "--port", str(port), *args]
    if form == "script":
        if faults:
            raise ValueError("faults are planted only in the module form")
        return [PYTHON, "serve_model.py", *served]
    if form != "module":
        raise ValueError(f"unknown form {form!r}")
    return stage_command("pipeline.serve_model", served, faults)


class ServeProcess:
    """A real serve_model process on a free loopback port, its output in
    ``log_dir/serve-<port>.log`` (or this process's output when None); killed when the
    context ends if it still runs.

    ``args`` are serve_model's options; ``prefix`` goes before the command (e.g. taskset).
    """

    def __init__(
        self,
        store_url: str,
        env: Optional[Dict[str, str]] = None,
        log_dir: Optional[Path] = None,
        args: Sequence[str] = (),
        form: str = "module",
        faults: Sequence[str] = (),
        prefix: Sequence[str] = (),
        port: Optional[int] = None,
    ) -> None:
        self.port = free_port() if port is None else port
        self.log_path = None if log_dir is None else log_dir / f"serve-{self.port}.log"
        self._log: Optional[IO[str]] = None if self.log_path is None else open(self.log_path, "w")
        self.process = subprocess.Popen(
            [*prefix, *serve_command(store_url, self.port, form, args, faults)],
            cwd=PIPELINE_DIR if form == "script" else REPO_ROOT,
            env=stage_env() if env is None else env,
            stdout=self._log, stderr=None if self._log is None else subprocess.STDOUT,
        )

    def wait_listening(self, timeout: float = START_TIMEOUT_SECONDS) -> "ServeProcess":
        """Block until the port accepts connections; RuntimeError with the log if the process
        exits first or does not listen in time."""
        wait_for_port(self.port, self.process, timeout, self.output)
        return self

    def output(self) -> str:
        """Everything the process has logged so far (nothing when it logs to this process's)."""
        if self._log is None or self.log_path is None:
            return ""
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

    def call(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        """One request on a fresh connection: status and parsed JSON."""
        return call(self.port, method, path, body)

    def served_version(self, product_code: str = "SKU001") -> str:
        """The model_version a prediction comes back with (asserting it succeeded)."""
        status, body = self.call("POST", SINGLE_PATH,
                                 {"product_code": product_code, "orders_placed": 10})
        assert status == 200, body
        return str(body["model_version"])

    def terminate(self) -> float:
        """Send SIGTERM; the monotonic time it was sent."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        return sent

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """Stop gracefully: SIGTERM, then SIGKILL if it still runs after ``timeout``; the exit
        status."""
        return stop_process(self.process, timeout)

    def close(self) -> None:
        """Make sure the process is gone (killing it if it still runs) and its log closed."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> "ServeProcess":
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


def call(port: int, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
    """One request on a fresh connection: status and parsed JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        status, parsed, _ = request(conn, method, path, body)
        return status, parsed
    finally:
        conn.close()
