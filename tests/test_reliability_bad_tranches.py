"""Bad tranches (issue 5, item 8): each leaves the store byte-for-byte unchanged and the
service serving the previous model.

The data contract's own unit tests (which rule, which message) live in
tests/test_validation.py; these tests are about the store and the running service.
One local store holds a good tranche and the model train_model published from it,
served by a real serve_model process that polls the store. Each bad tranche lands as
the newest; train_model runs (its CLI entry point, in process, for speed) and must
exit non-zero with one ERROR line, leaving every object's sha256 as it was and the
service answering with the same model_version. A subprocess run of the CLI on S3
and a final good tranche (which must be published and picked up) are the controls.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Dict, Iterator, List, NamedTuple

import pytest

from pipeline.artefacts import load_latest
from pipeline.simulate import simulate_tranche, tranche_key
from pipeline.store import Store, open_store
from testing_support.models import publish_model, simple_model
from testing_support.servers import ServeProcess, refreshing
from testing_support.stages import error_lines, run_stage, stage_env
from testing_support.stores import snapshot
from testing_support.tranches import BAD_TRANCHES
from tests.reliability_support import full_only

FIRST_WEEK = datetime(2026, 11, 6, 23, 0, tzinfo=timezone.utc)


class Served(NamedTuple):
    """The shared store, the service on it, and the version it serves."""

    url: str
    store: Store
    service: ServeProcess
    version: str
    week: List[int]


def _tranche_key(week: int) -> str:
    return tranche_key((FIRST_WEEK + timedelta(days=7 * week)).strftime("%Y-%m-%dT%H:%M:%S"))


def _train_in_process(url: str, caplog: pytest.LogCaptureFixture) -> int:
    """train_model's CLI entry point in this process, its log captured (not reconfigured)."""
    from pipeline import train_model

    caplog.clear()
    configure = train_model.configure_logging
    train_model.configure_logging = lambda level: None  # type: ignore[assignment]
    try:
        with caplog.at_level(logging.INFO):
            return int(train_model.main([url]))
    finally:
        train_model.configure_logging = configure  # type: ignore[assignment]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A local store with a trained, published model and serve_model polling it."""
    root = tmp_path_factory.mktemp("bad-tranches")
    url = str(root / "store")
    store = open_store(url)
    store.write_bytes(_tranche_key(0), simulate_tranche(1000, seed=1).to_csv())
    done = run_stage("pipeline.train_model", [url], stage_env())
    assert done.returncode == 0, done.stderr
    version = load_latest(store).version
    with ServeProcess(url, stage_env(), root, args=refreshing(0.2)) as service:
        service.wait_listening()
        assert service.served_version() == version
        yield Served(url, store, service, version, [1])


@pytest.mark.parametrize("case", sorted(BAD_TRANCHES))
def test_bad_tranche_changes_nothing(
    served: Served, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = _tranche_key(served.week[0])
    served.week[0] += 1
    served.store.write_bytes(key, BAD_TRANCHES[case]())
    before = snapshot(served.store)
    code = _train_in_process(served.url, caplog)
    assert code != 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert key in errors[0].getMessage() or "tranche" in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert snapshot(served.store) == before
    assert served.service.served_version() == served.version


def test_the_service_ignored_every_bad_week(served: Served) -> None:
    """After all bad runs (and many refresh polls) the service still serves the first model."""
    assert served.service.served_version() == served.version
    assert load_latest(served.store).version == served.version
    assert "Traceback" not in served.service.output()


def test_control_a_good_tranche_is_published_and_served(served: Served) -> None:
    """The control: the same set-up does publish, so the checks above can fail."""
    served.store.write_bytes(_tranche_key(served.week[0]), simulate_tranche(1000, seed=2).to_csv())
    served.week[0] += 1
    done = run_stage("pipeline.train_model", [served.url], stage_env())
    assert done.returncode == 0, done.stderr
    new = load_latest(served.store).version
    assert new != served.version
    assert served.service.wait_for_log(new), served.service.output()
    assert served.service.served_version() == new


@pytest.fixture
def s3_served(s3_url: str) -> Served:
    """An S3 store with a good tranche and a published model (no service)."""
    store = open_store(s3_url)
    store.write_bytes(_tranche_key(0), simulate_tranche(1000, seed=1).to_csv())
    pointer = publish_model(store, simple_model(1.0))
    return Served(s3_url, store, None, pointer.model_version, [1])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "case", ["binary", pytest.param("hours-over-max", marks=full_only),
             pytest.param("every-row-bad", marks=full_only)],
)
def test_bad_tranche_on_s3_changes_nothing(
    s3_served: Served, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    s3_served.store.write_bytes(_tranche_key(1), BAD_TRANCHES[case]())
    before = snapshot(s3_served.store)
    assert _train_in_process(s3_served.url, caplog) != 0
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert snapshot(s3_served.store) == before
    assert load_latest(s3_served.store).version == s3_served.version


@full_only
def test_bad_tranche_through_the_cli_on_s3_changes_nothing(
    s3_served: Served, aws_env: Dict[str, str]
) -> None:
    s3_served.store.write_bytes(_tranche_key(1), BAD_TRANCHES["missing-column"]())
    before = snapshot(s3_served.store)
    done = run_stage("pipeline.train_model", [s3_served.url], stage_env(aws_env))
    output = done.stdout + done.stderr
    assert done.returncode != 0
    errors = error_lines(output)
    assert len(errors) == 1, output
    assert "product_code" in errors[0]
    assert "Traceback" not in output
    assert snapshot(s3_served.store) == before
    assert load_latest(s3_served.store).version == s3_served.version
