"""scripts/run_local.sh: seeds the local store, trains, serves, and prints a curl that works."""
from __future__ import annotations

import hashlib
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
from typing import List, Optional

import pytest

from tests.conftest import REPO_ROOT, free_port

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


def test_run_local_seeds_trains_serves_and_prints_a_working_curl(tmp_path: Path) -> None:
    venv = _ready_venv(tmp_path / "venv")
    port = free_port()
    env = dict(os.environ, VENV=str(venv), STORE=str(tmp_path / "store"), PORT=str(port),
               ROWS="300", WEEKS="2")
    env.pop("TTD_API_KEY", None)
    process = subprocess.Popen(
        ["bash", str(REPO_ROOT / "scripts" / "run_local.sh")], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
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
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(list((tmp_path / "store" / "datasets").iterdir())) == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("key", [None, "s3cr3t key with 'quotes' and $dollar"])
def test_the_printed_curl_works_as_pasted_with_and_without_a_key(
    tmp_path: Path, key: Optional[str]
) -> None:
    venv = _ready_venv(tmp_path / "venv")
    port = free_port()
    env = dict(os.environ, VENV=str(venv), STORE=str(tmp_path / "store"), PORT=str(port),
               ROWS="300", WEEKS="1")
    env.pop("TTD_API_KEY", None)
    if key is not None:
        env["TTD_API_KEY"] = key
    process = subprocess.Popen(
        ["bash", str(REPO_ROOT / "scripts" / "run_local.sh")], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
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
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
