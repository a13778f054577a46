"""Running the project's commands as Bodywork runs them: paths, environment, subprocesses."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_DIR = REPO_ROOT / "pipeline"
PYTHON = sys.executable
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def can_connect(port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on the loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll a predicate until it holds or the timeout passes; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_for_port(
    port: int, process: "subprocess.Popen[Any]", timeout: float,
    output: Callable[[], str] = str,
) -> None:
    """Block until the port accepts connections; RuntimeError (with the process's ``output``)
    if the process exits first or nothing listens within ``timeout`` seconds."""
    if not wait_for(lambda: process.poll() is not None or can_connect(port), timeout, 0.02):
        raise RuntimeError(f"nothing listened on port {port} within {timeout} s:\n{output()}")
    if process.poll() is not None:
        raise RuntimeError(f"the process exited {process.returncode} before listening on "
                           f"port {port}:\n{output()}")


def stop_process(process: "subprocess.Popen[Any]", timeout: float = 10.0) -> int:
    """Stop a process gracefully: SIGTERM, then SIGKILL if it still runs after ``timeout``;
    its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def stage_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment Bodywork gives a stage: PYTHONPATH at the repo root, unbuffered output,
    none of this machine's AWS_* or TTD_* settings (no key from the developer's shell), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TTD_"))}
    env.update(extra or {})
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stage_command(module: str, args: Sequence[str], faults: Sequence[str] = ()) -> List[str]:
    """``python -m MODULE ARGS``, through the fault-planting runner when faults are asked
    (``testing_support.stage_faults``: ``--no-backoff``, ``--exit-on-write KEY``)."""
    if not faults:
        return [PYTHON, "-m", module, *args]
    return [PYTHON, "-m", "testing_support.stage_faults", *faults, "--", module, *args]


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
