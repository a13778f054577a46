"""train_model on a real Dask cluster: a scheduler and workers on loopback, started here.

The model fitted on the cluster is the local one byte for byte; an unreachable scheduler is
exit 3 with one ERROR line; a worker killed mid-fit has its tasks rerun on the other; a
cluster that loses every worker fails the run and publishes nothing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple

import pytest

from pipeline import artefacts
from pipeline.simulate import simulate_tranche, tranche_key
from pipeline.store import open_store
from pipeline.train_model import main
from pipeline.training.cluster import ADDRESS_ENV, NO_WORKERS_TIMEOUT_KEY
from pipeline.training.estimator import FitResult, fit_model
from pipeline.training.run import EXIT_CLUSTER, EXIT_OK
from testing_support.stages import PYTHON, REPO_ROOT, free_port, stage_env

distributed = pytest.importorskip("distributed")

CODES = tuple(f"PART{i:03d}" for i in range(150))
ROWS_PER_CODE = 60


class Cluster(NamedTuple):
    """A scheduler's address and the worker processes (by name) on it."""

    address: str
    workers: Dict[str, "subprocess.Popen[bytes]"]


def start_cluster(
    folder: Path, workers: int, scheduler_has_code: bool = True
) -> "tuple[Cluster, List[subprocess.Popen[bytes]]]":
    """``dask scheduler`` and ``workers`` one-thread ``dask worker`` processes (no nanny).

    Without ``scheduler_has_code`` the scheduler runs where the pipeline cannot be imported (no
    PYTHONPATH, another directory), as a scheduler from a stale image would.
    """
    env = stage_env({})
    scheduler_file = folder / "scheduler.json"
    quiet: Dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                             "env": env, "cwd": str(folder)}
    without_code = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    scheduler = subprocess.Popen(
        [PYTHON, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        **dict(quiet, env=env if scheduler_has_code else without_code))
    deadline = time.time() + 60
    while not scheduler_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    address = json.loads(scheduler_file.read_text())["address"]
    named = {f"w{i}": subprocess.Popen(
        [PYTHON, "-m", "dask", "worker", address, "--nthreads", "1", "--no-nanny",
         "--no-dashboard", "--name", f"w{i}"], **quiet) for i in range(workers)}
    with distributed.Client(address, set_as_default=False) as client:
        client.wait_for_workers(workers, timeout=60)
    return Cluster(address, named), [scheduler, *named.values()]


def stop(processes: List["subprocess.Popen[bytes]"]) -> None:
    """Stop a cluster's processes, killing any that hang."""
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:  # a worker may hang closing: it must not fail the test
            process.kill()
            process.wait(30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh two-worker cluster, stopped after the test."""
    found, processes = start_cluster(tmp_path, 2)
    yield found
    stop(processes)


@pytest.fixture(scope="module")
def tranche() -> bytes:
    return simulate_tranche(len(CODES) * ROWS_PER_CODE, seed=11, shape="saturating",
                            product_codes=CODES).to_csv()


@pytest.fixture(scope="module")
def local_fit(tranche: bytes) -> FitResult:
    return fit_columns(tranche)


def fit_columns(data: bytes, **params: Any) -> FitResult:
    from pipeline.training.validation import validate_tranche

    rows = validate_tranche(data)
    return fit_model(rows.codes(), rows.orders_placed, rows.hours_to_dispatch, **params)


def published_model(url: str) -> bytes:
    pointer = json.loads(open_store(url).read_bytes(artefacts.POINTER_KEY))
    return open_store(url).read_bytes(pointer["model_key"])


def store_with(tmp_path: Path, name: str, data: bytes) -> str:
    url = str(tmp_path / name)
    open_store(url).write_bytes(tranche_key("2026-11-20T23:00:00"), data)
    return url


def test_the_stage_on_dask_publishes_the_local_model_byte_for_byte(
    cluster: Cluster, tranche: bytes, tmp_path: Path
) -> None:
    local, remote = store_with(tmp_path, "local", tranche), store_with(tmp_path, "dask", tranche)
    assert main([local, "--n-jobs", "1", "--no-report"]) == EXIT_OK
    assert main([remote, "--dask-scheduler", cluster.address, "--no-report"]) == EXIT_OK
    assert published_model(remote) == published_model(local)
    assert len(json.loads(published_model(local))["curves"]) == len(CODES)


def test_an_unreachable_scheduler_is_exit_3_with_one_error_line_naming_it(
    tranche: bytes, tmp_path: Path
) -> None:
    url = store_with(tmp_path, "store", tranche)
    address = f"tcp://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [PYTHON, "-m", "pipeline.train_model", url, "--dask-connect-timeout", "1"],
        cwd=REPO_ROOT, env=stage_env({ADDRESS_ENV: address}), capture_output=True, text=True,
        timeout=120,
    )
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert done.returncode == EXIT_CLUSTER == 3, done.stderr
    assert len(errors) == 1 and address in errors[0], done.stderr
    assert open_store(url).read_versioned(artefacts.POINTER_KEY) is None


def test_a_scheduler_without_the_code_is_exit_3_with_one_error_line_and_no_traceback(
    tranche: bytes, tmp_path: Path
) -> None:
    found, processes = start_cluster(tmp_path, 1, scheduler_has_code=False)
    try:
        url = store_with(tmp_path, "store", tranche)
        done = subprocess.run(
            [PYTHON, "train_model.py", url, "--dask-scheduler", found.address],
            cwd=REPO_ROOT / "pipeline", env=stage_env({}), capture_output=True, text=True,
            timeout=300,
        )
    finally:
        stop(processes)
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert done.returncode == EXIT_CLUSTER, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and found.address in errors[0], done.stderr
    assert "scheduler" in errors[0] and "check" in errors[0], errors[0]
    assert open_store(url).read_versioned(artefacts.POINTER_KEY) is None
    assert not open_store(url).list_keys("models/")


def kill_when_busy(cluster: Cluster, names: List[str], running: threading.Thread) -> List[str]:
    """SIGKILL the named workers once the scheduler has given each a task; what they held."""
    held: List[str] = []
    with distributed.Client(cluster.address, set_as_default=False) as client:
        deadline = time.time() + 120
        while running.is_alive() and time.time() < deadline:
            busy = {client.scheduler_info()["workers"][w]["name"]: tasks
                    for w, tasks in client.processing().items()
                    if w in client.scheduler_info()["workers"]}
            if all(busy.get(name) for name in names):
                for name in names:
                    held += busy[name]
                    os.kill(cluster.workers[name].pid, signal.SIGKILL)
                    cluster.workers[name].wait(30)
                return held
            time.sleep(0.02)
    return held


def test_a_fits_own_error_is_raised_as_a_local_run_raises_it(cluster: Cluster) -> None:
    from pipeline.training.cluster import map_on_cluster

    assert map_on_cluster(cluster.address, int, ["1", "2"]) == [1, 2]
    with pytest.raises(ValueError, match="invalid literal"):
        map_on_cluster(cluster.address, int, ["1", "x"])


def test_a_worker_killed_mid_fit_has_its_fits_rerun_on_the_other(
    cluster: Cluster, tranche: bytes, local_fit: FitResult
) -> None:
    results: List[FitResult] = []
    fitting = threading.Thread(target=lambda: results.append(
        fit_columns(tranche, dask_scheduler=cluster.address)))
    fitting.start()
    held = kill_when_busy(cluster, ["w0"], fitting)
    fitting.join(300)
    assert held, "w0 was killed while it held fits"
    assert cluster.workers["w0"].returncode == -signal.SIGKILL
    [remote] = results
    assert remote.model.to_json() == local_fit.model.to_json()
    assert remote.fits == local_fit.fits


def test_a_cluster_that_loses_every_worker_fails_the_run_and_publishes_nothing(
    cluster: Cluster, tranche: bytes, tmp_path: Path
) -> None:
    import dask.config

    url = store_with(tmp_path, "store", tranche)
    status: List[int] = []
    with dask.config.set({NO_WORKERS_TIMEOUT_KEY: "2s"}):
        running = threading.Thread(target=lambda: status.append(
            main([url, "--dask-scheduler", cluster.address, "--no-report"])))
        running.start()
        held = kill_when_busy(cluster, ["w0", "w1"], running)
        running.join(120)
    assert held, "the workers were killed while they held fits"
    assert status == [EXIT_CLUSTER]
    assert open_store(url).read_versioned(artefacts.POINTER_KEY) is None
    assert not open_store(url).list_keys("models/")


def test_a_scheduler_that_dies_mid_fit_is_exit_3_and_publishes_nothing(
    tranche: bytes, tmp_path: Path
) -> None:
    found, processes = start_cluster(tmp_path, 2)
    scheduler = processes[0]
    try:
        url = store_with(tmp_path, "store", tranche)
        running = subprocess.Popen(
            [PYTHON, "train_model.py", url, "--dask-scheduler", found.address,
             "--dask-connect-timeout", "2"],
            cwd=REPO_ROOT / "pipeline", env=stage_env({}), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        with distributed.Client(found.address, set_as_default=False) as client:
            deadline = time.time() + 120
            while not any(client.processing().values()) and time.time() < deadline:
                time.sleep(0.02)
        scheduler.kill()
        _, stderr = running.communicate(timeout=300)
    finally:
        stop(processes)
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert running.returncode == EXIT_CLUSTER, stderr
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1 and found.address in errors[0], stderr
    assert not open_store(url).list_keys("models/")


class StubClient:
    """What _check_workers asks of a client: each worker's versions and thread counts."""

    def __init__(self, versions: Dict[str, Dict[str, str]]) -> None:
        self.versions = versions

    def run(self, function: Any) -> Dict[str, Dict[str, str]]:
        return self.versions

    def nthreads(self) -> Dict[str, int]:
        return {worker: 1 for worker in self.versions}


def test_a_worker_with_other_library_versions_is_refused_before_any_fit() -> None:
    from pipeline.training.cluster import ClusterError, _check_workers, fit_versions

    same = fit_versions()
    assert _check_workers(StubClient({"tcp://a:1": same, "tcp://b:1": same}), "tcp://s:1") == 2
    older = dict(same, numpy="1.26.4")
    with pytest.raises(ClusterError, match=r"tcp://b:1 .*numpy 1\.26\.4 \(here "):
        _check_workers(StubClient({"tcp://a:1": same, "tcp://b:1": older}), "tcp://s:1")
