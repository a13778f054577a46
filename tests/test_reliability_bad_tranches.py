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
from typing import Callable, Dict, Iterator, List, NamedTuple

import pytest

from pipeline.artefacts import load_latest
from pipeline.simulate import CSV_HEADER, simulate_tranche, tranche_key
from pipeline.store import Store, open_store
from tests.reliability_support import (
    Service,
    error_lines,
    full_only,
    publish_model,
    random_bytes,
    run_stage,
    simple_model,
    snapshot,
    stage_environment,
)

GOOD_ROWS = 400
FIRST_WEEK = datetime(2026, 11, 6, 23, 0, tzinfo=timezone.utc)


def _good_lines(seed: int, rows: int = GOOD_ROWS) -> List[str]:
    return simulate_tranche(rows, seed=seed).to_csv().decode().splitlines()


BAD_EVERY = 20  # one data row in 20 edited: 5% of the rows, beyond the 1% that may be set aside


def _edit(row: int, column: int, value: str) -> Callable[[List[str]], List[str]]:
    """Replace one field of every BAD_EVERY-th data row from ``row`` on (row 0 is the first
    after the header)."""
    def apply(lines: List[str]) -> List[str]:
        edited = list(lines)
        for line in range(row + 1, len(lines), BAD_EVERY):
            fields = edited[line].split(",")
            fields[column] = value
            edited[line] = ",".join(fields)
        return edited
    return apply


def _csv(lines: List[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


HOURS, ORDERS, CODE = 0, 1, 2
BAD_TRANCHES: Dict[str, Callable[[], bytes]] = {
    "missing-column": lambda: _csv([",".join(f.split(",")[:2]) for f in _good_lines(11)]),
    "wrong-type": lambda: _csv(_edit(7, ORDERS, "ten")(_good_lines(12))),
    "null": lambda: _csv(_edit(3, HOURS, "")(_good_lines(13))),
    "negative-orders": lambda: _csv(_edit(5, ORDERS, "-3")(_good_lines(14))),
    "non-integral-orders": lambda: _csv(_edit(5, ORDERS, "12.5")(_good_lines(15))),
    "inf-hours": lambda: _csv(_edit(9, HOURS, "inf")(_good_lines(16))),
    "nan-orders": lambda: _csv(_edit(9, ORDERS, "NaN")(_good_lines(17))),
    "hours-over-max": lambda: _csv(_edit(2, HOURS, "8760.5")(_good_lines(18))),
    "negative-hours": lambda: _csv(_edit(2, HOURS, "-0.25")(_good_lines(19))),
    "empty-product-code": lambda: _csv(_edit(4, CODE, "")(_good_lines(20))),
    "every-row-bad": lambda: _csv(_edit(0, HOURS, "-1")(_good_lines(21, rows=1))),
    "empty-file": lambda: b"",
    "header-only": lambda: (CSV_HEADER + "\n").encode(),
    "binary": lambda: b"\x89PNG\r\n\x1a\n\x00\x00" + random_bytes(seed=22),
    "unreadable-utf16": lambda: "\n".join(_good_lines(23)).encode("utf-16"),
}


class Served(NamedTuple):
    """The shared store, the service on it, and the version it serves."""

    url: str
    store: Store
    service: Service
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
    done = run_stage("pipeline.train_model", [url], stage_environment())
    assert done.returncode == 0, done.stderr
    version = load_latest(store).version
    with Service(url, stage_environment(), root, refresh_seconds=0.2) as service:
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
    done = run_stage("pipeline.train_model", [served.url], stage_environment())
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
    done = run_stage("pipeline.train_model", [s3_served.url], stage_environment(aws_env))
    output = done.stdout + done.stderr
    assert done.returncode != 0
    errors = error_lines(output)
    assert len(errors) == 1, output
    assert "product_code" in errors[0]
    assert "Traceback" not in output
    assert snapshot(s3_served.store) == before
    assert load_latest(s3_served.store).version == s3_served.version
