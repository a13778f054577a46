"""Running the per-part fits on an existing Dask cluster (``dask.distributed``).

Only the fitting leaves the stage's process: reading, validating, gating and publishing stay
here, so a cluster that fails can cost the run but never publish half a model. The workers must
run this repository's ``pipeline`` package with the train stage's lock (the same numpy, scipy and
scikit-learn): the fits are then the same as a local run's, byte for byte, and a worker whose
versions differ is refused before any fit is sent. A worker that dies mid-run has its tasks
rerun on the others by the scheduler; a task that kills its workers repeatedly, or a cluster
left without workers for ``distributed.scheduler.no-workers-timeout`` (Dask's own setting, e.g.
``DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT=60s``; 120 s when unset), fails the run with
:class:`ClusterError`. Connecting waits ``distributed.comm.timeouts.connect`` (``train_model
--dask-connect-timeout``).
"""
from __future__ import annotations

import platform
import sys
import time
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, TypeVar

ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_TIMEOUT_KEY = "distributed.comm.timeouts.connect"
NO_WORKERS_TIMEOUT_KEY = "distributed.scheduler.no-workers-timeout"
DEFAULT_NO_WORKER_SECONDS = 120.0
POLL_SECONDS = 0.2
# The libraries whose versions decide the fits' bytes.
FIT_LIBRARIES = ("numpy", "scipy", "sklearn", "pandas", "joblib")

Item = TypeVar("Item")
Result = TypeVar("Result")


class ClusterError(Exception):
    """The Dask cluster cannot be reached, is unfit, or could not finish the fits."""


def fit_versions() -> Dict[str, str]:
    """Python's version and those of the libraries the fits depend on, in this process."""
    versions = {"python": platform.python_version()}
    for name in FIT_LIBRARIES:
        __import__(name)
        versions[name] = str(getattr(sys.modules[name], "__version__", "unknown"))
    return versions


def _check_workers(client: Any, address: str) -> int:
    """The workers' thread count; ClusterError if none, or one runs other versions."""
    try:
        remote: Dict[str, Dict[str, str]] = client.run(fit_versions)
    except Exception as exc:  # an import error on a worker arrives as whatever it raised
        raise ClusterError(f"the workers of the Dask scheduler {address} cannot run this "
                           f"stage's code: {type(exc).__name__}: {exc}") from None
    local = fit_versions()
    for worker, versions in sorted(remote.items()):
        differ = [f"{name} {versions.get(name)} (here {value})"
                  for name, value in local.items() if versions.get(name) != value]
        if differ:
            raise ClusterError(f"Dask worker {worker} runs other versions than this stage, so "
                               f"its fits could differ: {', '.join(differ)}")
    return sum(client.nthreads().values())


def connect_timeout(seconds: float) -> ContextManager[Any]:
    """Dask's setting of how long to wait for the scheduler, for the fits of a ``with`` block."""
    # distributed adds its defaults to Dask's config when first imported: import it first, or
    # leaving the block would drop them along with the setting.
    import dask.config
    import distributed  # noqa: F401

    settings: ContextManager[Any] = dask.config.set({CONNECT_TIMEOUT_KEY: f"{seconds}s"})
    return settings


def _no_worker_seconds() -> float:
    """How long the fits may wait for a worker: Dask's no-workers-timeout, else the default."""
    import dask.config
    from dask.utils import parse_timedelta

    value = dask.config.get(NO_WORKERS_TIMEOUT_KEY, None)
    return DEFAULT_NO_WORKER_SECONDS if value is None else float(parse_timedelta(value, "s"))


def map_on_cluster(
    address: str, function: Callable[[Item], Result], items: Sequence[Item]
) -> List[Result]:
    """``[function(item) for item in items]``, each call a task on the cluster at ``address``.

    An exception raised by ``function`` itself is raised here, as a local run would raise it.
    """
    try:
        from distributed import Client
        from distributed.scheduler import KilledWorker, NoValidWorkerError, NoWorkerError
    except ImportError as exc:
        raise ClusterError(f"--dask-scheduler needs dask.distributed installed: {exc}") from None
    no_worker_seconds = _no_worker_seconds()
    try:
        client = Client(address, set_as_default=False)
    except Exception as exc:  # OSError, TimeoutError or ValueError, by the kind of failure
        raise ClusterError(f"the Dask scheduler {address} cannot be reached: {exc}") from None
    with client:
        waiting_since: Optional[float] = None if _check_workers(client, address) else time.time()
        futures = client.map(function, items, pure=False)
        while not all(future.done() for future in futures):
            time.sleep(POLL_SECONDS)
            if client.nthreads():
                waiting_since = None
            elif waiting_since is None:
                waiting_since = time.time()
            elif time.time() - waiting_since > no_worker_seconds:
                raise ClusterError(f"the Dask scheduler {address} has had no worker for "
                                   f"{no_worker_seconds:g} s; the fits were abandoned")
        try:
            results: List[Result] = client.gather(futures)
        except (KilledWorker, NoValidWorkerError, NoWorkerError) as exc:
            raise ClusterError(f"Dask workers of {address} died running the fits: {exc}") from None
    return results
