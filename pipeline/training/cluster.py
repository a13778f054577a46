"""Running the per-part fits on an existing Dask cluster (``dask.distributed``).

Only the fitting leaves the stage's process: reading, validating, gating and publishing stay
here, so a cluster that fails can cost the run but never publish half a model. The workers must
run this repository's ``pipeline`` package with the train stage's lock (the same numpy, scipy and
scikit-learn): the fits are then the same as a local run's, byte for byte, and a worker whose
versions differ is refused before any fit is sent. A worker that dies mid-run has its tasks
rerun on the others by the scheduler; a task that kills its workers repeatedly, or a cluster
left without workers for ``distributed.scheduler.no-workers-timeout`` (Dask's own setting, e.g.
``DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT=60s``; 120 s when unset), fails the run with
:class:`ClusterError`, as does any other failure of the cluster: a scheduler that cannot load this
code (it unpickles the tasks: checked before any fit is sent), one that dies or cannot be reached
again mid-run. A fit's own exception is raised as a local run raises it. Connecting waits
``distributed.comm.timeouts.connect`` (``train_model --dask-connect-timeout``).
"""
from __future__ import annotations

import logging
import platform
import sys
import time
from typing import (
    Any, Callable, ContextManager, Dict, List, NamedTuple, Optional, Sequence, TypeVar,
)

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


def demote_dask_errors(record: logging.LogRecord) -> bool:
    """A logging filter: Dask's own ERROR lines become warnings (the stage's ERROR says it all)."""
    if record.name.split(".", 1)[0] == "distributed" and record.levelno > logging.WARNING:
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
    return True


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


class _Raised(NamedTuple):
    """What a task's own function raised, carried back as its result (the task succeeded)."""

    error: BaseException


def _call(function: Callable[[Item], Result], item: Item) -> Any:
    """Run one task's function; its own exception comes back as a result, not a task error."""
    try:
        return function(item)
    except Exception as exc:  # re-raised in the stage's process, as a local run raises it
        return _Raised(exc)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")


def _check_scheduler(client: Any, address: str) -> None:
    """ClusterError unless the scheduler can load this stage's code (it unpickles the tasks)."""
    try:
        client.run_on_scheduler(fit_versions)
    except Exception as exc:  # whatever unpickling or importing raised on the scheduler
        raise ClusterError(
            f"the Dask scheduler {address} cannot run this stage's code ({_one_line(exc)}): "
            f"check that the scheduler runs the same image as the workers (this repository's "
            f"pipeline package and the train stage's lock)") from None


def map_on_cluster(
    address: str, function: Callable[[Item], Result], items: Sequence[Item]
) -> List[Result]:
    """``[function(item) for item in items]``, each call a task on the cluster at ``address``.

    An exception raised by ``function`` itself is raised here, as a local run would raise it;
    any failure of the cluster is a ClusterError naming the scheduler and what to check.
    """
    try:
        from distributed import Client
    except ImportError as exc:
        raise ClusterError(f"--dask-scheduler needs dask.distributed installed: {exc}") from None
    no_worker_seconds = _no_worker_seconds()
    try:
        client = Client(address, set_as_default=False)
    except Exception as exc:  # OSError, TimeoutError or ValueError, by the kind of failure
        raise ClusterError(f"the Dask scheduler {address} cannot be reached: {exc}") from None
    with client:
        try:
            results = _fits(client, address, function, items, no_worker_seconds)
        except ClusterError:
            raise
        except Exception as exc:  # any other failure of the cluster: the run fails, exit 3
            raise ClusterError(
                f"the Dask cluster of the scheduler {address} failed during the fits "
                f"({_one_line(exc)}): check that the scheduler and every worker run the same "
                f"image (this repository's pipeline package and the train stage's lock) and "
                f"stay up; nothing was published") from None
    for result in results:
        if isinstance(result, _Raised):
            raise result.error
    return results


def _fits(
    client: Any, address: str, function: Callable[[Item], Result], items: Sequence[Item],
    no_worker_seconds: float,
) -> List[Any]:
    """Submit the tasks, wait for them (or for a worker to come back), and gather the results."""
    from distributed.scheduler import KilledWorker, NoValidWorkerError, NoWorkerError

    _check_scheduler(client, address)
    waiting_since: Optional[float] = None if _check_workers(client, address) else time.time()
    futures = client.map(_call, [function] * len(items), items, pure=False)
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
        results: List[Any] = client.gather(futures)
    except (KilledWorker, NoValidWorkerError, NoWorkerError) as exc:
        raise ClusterError(f"Dask workers of {address} died running the fits: {exc}") from None
    return results
