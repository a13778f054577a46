"""Each stage run the way Bodywork runs it, with bodywork.yaml's args, against moto's S3 server.

Bodywork's stage runner clones the repository, `pip install`s the stage's requirements, then runs
`python <module>.py <args>` with the module's directory (pipeline/) as working directory and
PYTHONPATH at the clone's root. The first test does exactly that by hand; the second hands a
snapshot of this working tree to Bodywork 3.0.12's own runner (`bodywork stage`, the command its
pods run), which works offline from a file:// clone. It runs in `tox -e deployment_config`, where
Bodywork is installed, and is skipped elsewhere.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml

from pipeline.artefacts import read_pointer
from pipeline.store import open_store
from testing_support.stages import PYTHON, REPO_ROOT, free_port, stage_env
from tests.deployment_support import bodywork_config, stage_file

CONFIG = bodywork_config()
STORE_URL = str(CONFIG["stages"]["train_model"]["args"][0])
API_KEY = "deployment-test-key"
START_TIMEOUT_SECONDS = 90.0

StartServe = Callable[[Dict[str, str], int], "subprocess.Popen[bytes]"]


def _stage_command(name: str, extra: Tuple[str, ...] = ()) -> Tuple[List[str], Path]:
    """`python <module>.py <args from bodywork.yaml>` and its working directory."""
    stage = CONFIG["stages"][name]
    path = stage_file(stage)
    return [PYTHON, path.name, *[str(a) for a in stage.get("args", [])], *extra], path.parent


@pytest.fixture
def deployment_store(aws_env: Dict[str, str]) -> Dict[str, str]:
    """bodywork.yaml's bucket on the test server, empty under the store's prefix."""
    import boto3

    bucket, _, prefix = STORE_URL[len("s3://"):].partition("/")
    s3 = boto3.client("s3")
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
    for item in listed:
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    return aws_env


def _simulate(env: Dict[str, str]) -> None:
    command = [PYTHON, "-m", "pipeline.simulate", STORE_URL, "--rows", "1000", "--weeks", "2",
               "--seed", "11"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def _wait_for_port(process: "subprocess.Popen[bytes]", port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the service exited with {process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the service did not open port {port} in {START_TIMEOUT_SECONDS} s")


def _post(port: int, body: Dict[str, Any], key: Optional[str]) -> Tuple[int, Dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v0.1/time_to_dispatch",
        data=json.dumps(body).encode(), headers=headers, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _children(pid: int) -> List[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _stop(process: "subprocess.Popen[bytes]", runner_parent: bool) -> int:
    """SIGTERM the service and the exit status of the process started (runner or service).

    Under Bodywork's runner the signal goes to the service, its child: the runner installs no
    handler (as PID 1 in a pod it never even receives SIGTERM), and it exits 0 only if the
    service it runs does.
    """
    if process.poll() is None:
        targets = _children(process.pid) if runner_parent else [process.pid]
        for pid in targets or [process.pid]:
            os.kill(pid, signal.SIGTERM)
    try:
        return process.wait(timeout=20)
    finally:
        if process.poll() is None:
            if runner_parent:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.wait()


def _check_pipeline(env: Dict[str, str], run_train: Callable[[Dict[str, str]], None],
                    start_serve: StartServe, port: int, runner_parent: bool) -> None:
    """Simulate a tranche, train, serve on a port, and ask the service for a prediction."""
    _simulate(env)
    run_train(env)
    pointed = read_pointer(open_store(STORE_URL))
    assert pointed is not None, "train_model published no model"
    serve_env = dict(env, TTD_API_KEY=API_KEY)
    process = start_serve(serve_env, port)
    try:
        _wait_for_port(process, port)
        body = {"product_code": "SKU001", "orders_placed": 112}
        assert _post(port, body, None)[0] == 401
        status, answer = _post(port, body, API_KEY)
        assert status == 200, answer
        assert answer["model_version"] == pointed[0].model_version
        assert answer["est_hours_to_dispatch"] > 0
        assert answer["p90_hours_to_dispatch"] >= answer["est_hours_to_dispatch"]
        assert answer["extrapolated"] is False
        status, far = _post(port, {"product_code": "SKU001", "orders_placed": 100_000}, API_KEY)
        assert status == 200 and far["extrapolated"] is True
    finally:
        assert _stop(process, runner_parent) == 0


def test_stages_run_as_bodywork_runs_them(deployment_store: Dict[str, str]) -> None:
    env = stage_env(deployment_store)

    def run_train(env: Dict[str, str]) -> None:
        command, cwd = _stage_command("train_model")
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr

    def start_serve(env: Dict[str, str], port: int) -> "subprocess.Popen[bytes]":
        # The only change to bodywork.yaml's args: a free port instead of 8000.
        command, cwd = _stage_command("serve_model", ("--port", str(port)))
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    _check_pipeline(env, run_train, start_serve, free_port(), runner_parent=False)


# Bodywork's own stage runner ----------------------------------------------------------------

def _tree_files() -> List[str]:
    """The working tree's files as a clone would have them (tracked and new, minus ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (REPO_ROOT / name).is_file()]


@pytest.fixture(scope="module")
def snapshot_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, int]]:
    """A git repository holding the working tree, serving on a free port; its file:// URL."""
    if importlib.util.find_spec("bodywork") is None or shutil.which("git") is None:
        if os.environ.get("TTD_REQUIRE_BODYWORK") == "1":
            pytest.fail("Bodywork's stage runner test needs bodywork and git installed")
        pytest.skip("Bodywork 3.0.12 is installed only in tox -e deployment_config")
    root = tmp_path_factory.mktemp("snapshot") / "repo"
    for name in _tree_files():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    port = free_port()
    config = yaml.safe_load((root / "bodywork.yaml").read_text())
    config["stages"]["serve_model"]["args"] += ["--port", str(port)]
    (root / "bodywork.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"],
                    ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + command, cwd=root, check=True, capture_output=True)
    yield f"file://{root}", port


def _bodywork_stage(url: str, stage: str) -> List[str]:
    """The command a Bodywork stage pod runs (see bodywork/k8s/batch_jobs.py)."""
    bodywork = Path(sys.executable).parent / "bodywork"
    return [str(bodywork), "stage", url, stage, "--branch=main"]


def test_stages_run_by_bodyworks_own_stage_runner(
    deployment_store: Dict[str, str], snapshot_repo: Tuple[str, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url, port = snapshot_repo
    # `python` on PATH is the one Bodywork runs the stage with: this environment's.
    env = dict(stage_env(deployment_store))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH")

    def run_train(env: Dict[str, str]) -> None:
        workdir = tmp_path_factory.mktemp("train_pod")
        done = subprocess.run(_bodywork_stage(url, "train_model"), cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def start_serve(env: Dict[str, str], _port: int) -> "subprocess.Popen[bytes]":
        workdir = tmp_path_factory.mktemp("serve_pod")
        return subprocess.Popen(_bodywork_stage(url, "serve_model"), cwd=workdir, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    _check_pipeline(env, run_train, start_serve, port, runner_parent=True)
