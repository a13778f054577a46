"""scripts/run_local.sh: seeds the local store, trains, serves, and prints a curl that works."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from testing_support.stages import REPO_ROOT, free_port

READY_TIMEOUT_SECONDS = 90.0


def _ready_venv(path: Path) -> Path:
    """A stand-in .venv whose python is this test's, stamped as up to date with pins and lock."""
    (path / "bin").mkdir(parents=True)
    python = path / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    pinned = (REPO_ROOT / "requirements_pipe.txt").read_bytes()
    locked = (REPO_ROOT / "constraints" / "pipeline_py39.txt").read_bytes()
    digest = hashlib.sha256(pinned + locked).hexdigest()
    (path / ".requirements_pipe.sha256").write_text(digest + "\n")
    return path


def _lines_until(process: "subprocess.Popen[str]", marker: str) -> List[str]:
    """Output lines up to and including the first that contains the marker."""
    lines: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: List[str] = []
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            assert process.poll() is None, "".join(seen)
            continue
        if marker in seen[-1]:
            return seen + [lines.get(timeout=5)]
    raise AssertionError("no ready message in time:\n" + "".join(seen))


def local_env(tmp_path: Path, **settings: str) -> Dict[str, str]:
    """run_local.sh's environment: a ready venv, no API key, and the given settings."""
    env = dict(os.environ, VENV=str(_ready_venv(tmp_path / "venv")))
    env.pop("TTD_API_KEY", None)
    env.update(settings)
    return env


@contextlib.contextmanager
def run_local(tmp_path: Path, env: Dict[str, str]) -> Iterator["subprocess.Popen[str]"]:
    """run_local.sh running with its output on a pipe; killed if the test leaves it running."""
    process = subprocess.Popen(
        ["bash", str(REPO_ROOT / "scripts" / "run_local.sh")], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def stops_gracefully(process: "subprocess.Popen[str]") -> bool:
    """SIGTERM, as Ctrl-C or Kubernetes sends it: the service drains and the script exits 0."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=20) == 0


def test_run_local_seeds_trains_serves_and_prints_a_working_curl(tmp_path: Path) -> None:
    port = free_port()
    env = local_env(tmp_path, STORE=str(tmp_path / "store"), PORT=str(port), ROWS="300",
                    WEEKS="2")
    with run_local(tmp_path, env) as process:
        output = "".join(_lines_until(process, "curl -s -X POST"))
        assert "reusing" in output and "wrote 2 tranche(s)" in output
        assert "published model" in output
        url = re.search(r"curl -s -X POST (\S+)", output)
        body = re.search(r"-d '([^']+)'", output)
        assert url and body, output
        assert url.group(1) == f"http://127.0.0.1:{port}/api/v0.1/time_to_dispatch"
        request = urllib.request.Request(
            url.group(1), data=body.group(1).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert json.loads(response.read())["est_hours_to_dispatch"] > 0
        assert stops_gracefully(process)
    assert len(list((tmp_path / "store" / "datasets").iterdir())) == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("key", [None, "s3cr3t key with 'quotes' and $dollar"])
def test_the_printed_curl_works_as_pasted_with_and_without_a_key(
    tmp_path: Path, key: Optional[str]
) -> None:
    env = local_env(tmp_path, STORE=str(tmp_path / "store"), PORT=str(free_port()), ROWS="300",
                    WEEKS="1", **({"TTD_API_KEY": key} if key is not None else {}))
    with run_local(tmp_path, env) as process:
        output = "".join(_lines_until(process, "-d '"))
        printed = re.search(r"^\s*(curl -s -X POST .*\\\n\s*-d '[^']+')$", output, re.MULTILINE)
        assert printed, output
        command = printed.group(1)
        assert (key is None) is ("X-API-Key" not in command)
        assert key is None or key not in output
        # Pasted into a shell that has the key exported, as the printed note asks.
        shell_env = {"PATH": os.environ["PATH"], **({"TTD_API_KEY": key} if key else {})}
        pasted = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"],
                                env=shell_env, capture_output=True, text=True, timeout=20)
        body, status = pasted.stdout.rsplit("\n", 1)
        assert status == "200", pasted.stdout + pasted.stderr
        answer = json.loads(body)
        assert answer["est_hours_to_dispatch"] > 0
        assert set(answer) >= {"p90_hours_to_dispatch", "extrapolated", "model_version"}
        if key is not None:
            without = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"],
                                     env={"PATH": os.environ["PATH"]}, capture_output=True,
                                     text=True, timeout=20)
            assert without.stdout.rsplit("\n", 1)[1] == "401"
        assert stops_gracefully(process)


class Holder(http.server.BaseHTTPRequestHandler):
    """Another process's server on the port: it answers /health for some other model."""

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        body = json.dumps({"status": "ok", "model_version": "someone-elses-model"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_run_local_fails_clearly_when_the_port_is_taken(tmp_path: Path) -> None:
    holder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Holder)
    port = holder.server_address[1]
    threading.Thread(target=holder.serve_forever, daemon=True).start()
    env = local_env(tmp_path, STORE=str(tmp_path / "store"), PORT=str(port), ROWS="300",
                    WEEKS="1")
    try:
        done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "run_local.sh")],
                              cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=300)
    finally:
        holder.shutdown()
        holder.server_close()
    assert done.returncode != 0, done.stdout
    assert "serving at" not in done.stdout + done.stderr
    said = [line for line in done.stderr.splitlines() if f"127.0.0.1:{port}" in line]
    assert said and "taken" in said[-1] and "someone-elses-model" in said[-1], done.stderr
    assert "PORT=" in said[-1], "it says how to choose another port"


def test_a_rollback_survives_run_local(tmp_path: Path) -> None:
    from pipeline import models, train_model
    from pipeline.artefacts import read_pointer
    from pipeline.simulate import main as simulate
    from pipeline.store import open_store

    store = str(tmp_path / "store")
    assert simulate([store, "--rows", "300", "--until", "2026-11-14"]) == 0
    assert train_model.main([store, "--no-report"]) == 0
    first = read_pointer(open_store(store))
    assert simulate([store, "--rows", "300", "--next"]) == 0
    assert train_model.main([store, "--no-report", "--champion-tolerance", "100"]) == 0
    assert first is not None
    assert models.main([store, "rollback", first[0].model_version, "--by", "alice"]) == 0
    port = free_port()
    with run_local(tmp_path, local_env(tmp_path, STORE=store, PORT=str(port))) as process:
        output = "".join(_lines_until(process, "curl -s -X POST"))
        assert "rolled back from" in output and "alice" in output, output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            assert json.loads(answer.read())["model_version"] == first[0].model_version
        assert stops_gracefully(process)


def test_the_local_drill_a_new_week_reaches_a_service_that_polls(tmp_path: Path) -> None:
    from pipeline import train_model
    from pipeline.artefacts import read_pointer
    from pipeline.simulate import main as simulate
    from pipeline.store import open_store

    port = free_port()
    store = str(tmp_path / "store")
    env = local_env(tmp_path, STORE=store, PORT=str(port), ROWS="300", WEEKS="2",
                    TTD_MODEL_REFRESH_SECONDS="0.5")
    with run_local(tmp_path, env) as process:
        output = "".join(_lines_until(process, "curl -s -X POST"))
        assert "polls" in output, output
        before = read_pointer(open_store(store))
        assert before is not None and before[0].model_version in output
        # A new week arrives (docs/operations.md, the local drill).
        assert simulate([store, "--rows", "300", "--next"]) == 0
        assert train_model.main([store, "--no-report", "--champion-tolerance", "100"]) == 0
        after = read_pointer(open_store(store))
        assert after is not None and after[0].model_version != before[0].model_version
        served, deadline = "", time.monotonic() + 60
        while served != after[0].model_version and time.monotonic() < deadline:
            time.sleep(0.2)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
                served = json.loads(answer.read())["model_version"]
        assert served == after[0].model_version
        assert stops_gracefully(process)
