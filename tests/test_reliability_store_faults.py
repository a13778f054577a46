"""Store faults (issue 5, item 3): 503 SlowDown and timeouts injected over real HTTP.

A fault-injecting proxy on 127.0.0.1 sits in front of moto's S3 server and
AWS_ENDPOINT_URL points at it, so every fault reaches the code exactly as a real
one would: through botocore's HTTP stack. The proxy counts the attempts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from pipeline.artefacts import load_latest, read_pointer
from pipeline.simulate import simulate_tranche, tranche_key
from pipeline.store import DEFAULT_MAX_ATTEMPTS, ConcurrentUpdate, Store, StoreError, open_store
from testing_support.models import publish_model, simple_model
from testing_support.servers import ServeProcess, refreshing
from testing_support.stages import error_lines, run_stage, stage_env
from testing_support.stores import FaultProxy, snapshot
from tests.reliability_support import full_only

# Long enough that an undelayed request on a busy machine never times out by accident.
SHORT_TIMEOUT = 0.75


@pytest.fixture
def proxy(s3_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The proxy, with AWS_ENDPOINT_URL pointing at it (the bucket already exists)."""
    with FaultProxy(s3_endpoint) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.url)
        yield running


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Record every backoff botocore's *standard* retry mode takes, without sleeping it."""
    from botocore.retries import standard

    taken: List[int] = []

    def no_sleep(self: object, context: standard.RetryContext) -> float:
        taken.append(context.attempt_number)
        return 0.0

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", no_sleep)
    return taken


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_transient_503s_within_the_budget_are_retried_away(
    s3_url: str, proxy: FaultProxy, backoffs: List[int], max_attempts: int
) -> None:
    store = open_store(s3_url, max_attempts=max_attempts)
    store.write_bytes("datasets/a.csv", b"data")
    proxy.plan.reset(fail_first=max_attempts - 1, only_methods=("GET",))
    assert store.read_bytes("datasets/a.csv") == b"data"
    assert proxy.plan.count("GET") == max_attempts
    assert backoffs == list(range(1, max_attempts))


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_503s_beyond_the_budget_give_a_store_error_after_exactly_the_budget(
    s3_url: str, proxy: FaultProxy, backoffs: List[int], max_attempts: int
) -> None:
    store = open_store(s3_url, max_attempts=max_attempts)
    store.write_bytes("datasets/a.csv", b"data")
    proxy.plan.reset(fail_first=max_attempts, only_methods=("GET",))
    with pytest.raises(StoreError, match=r"s3://.*/datasets/a\.csv.*SlowDown"):
        store.read_bytes("datasets/a.csv")
    assert proxy.plan.count("GET") == max_attempts
    assert len(backoffs) == max_attempts - 1


def test_timeouts_are_retried_then_reported(
    s3_url: str, proxy: FaultProxy, backoffs: List[int]
) -> None:
    store = open_store(s3_url, max_attempts=3, timeout_seconds=SHORT_TIMEOUT)
    store.write_bytes("datasets/a.csv", b"data")
    proxy.plan.reset(delay_first=2, delay_seconds=3 * SHORT_TIMEOUT, only_methods=("GET",))
    assert store.read_bytes("datasets/a.csv") == b"data"
    assert proxy.plan.count("GET") == 3
    proxy.plan.reset(delay_first=3, delay_seconds=3 * SHORT_TIMEOUT, only_methods=("GET",))
    with pytest.raises(StoreError, match=r"s3://.*/datasets/a\.csv.*timeout"):
        store.read_bytes("datasets/a.csv")
    assert proxy.plan.count("GET") == 3


def test_the_default_budget_is_bounded(s3_url: str, proxy: FaultProxy, backoffs: List[int]) -> None:
    store = open_store(s3_url)
    proxy.plan.reset(fail_all=True)
    with pytest.raises(StoreError):
        store.list_keys("datasets/")
    assert proxy.plan.count() == DEFAULT_MAX_ATTEMPTS


@pytest.mark.parametrize("failing", ["artefact", "metadata", "pointer"])
def test_publish_that_runs_out_of_retries_leaves_the_previous_model(
    s3_url: str, proxy: FaultProxy, backoffs: List[int], failing: str
) -> None:
    store = open_store(s3_url, max_attempts=2)
    first = publish_model(store, simple_model(1.0))
    before = snapshot(store)
    passing = ["artefact", "metadata", "pointer"].index(failing)
    proxy.plan.reset(pass_first=passing, fail_all=True, only_methods=("PUT",))
    with pytest.raises(StoreError, match="SlowDown"):
        publish_model(store, simple_model(2.0))
    assert proxy.plan.count("PUT") == passing + 2
    proxy.plan.reset(pass_first=0, fail_all=False, only_methods=())
    assert load_latest(store).version == first.model_version
    after = snapshot(store)
    assert after["models/latest.json"] == before["models/latest.json"]
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(after) - len(before) == passing


def test_a_lost_pointer_response_leaves_a_consistent_pointer(
    s3_url: str, proxy: FaultProxy, backoffs: List[int]
) -> None:
    """The pointer PUT is applied but its response never arrives; the retry meets its own write.

    The conditional retry then fails (412); publish re-reads the pointer, finds its own
    model named there, and reports success rather than a lost race.
    """
    store = open_store(s3_url, max_attempts=3, timeout_seconds=SHORT_TIMEOUT)
    publish_model(store, simple_model(1.0))
    proxy.plan.reset(
        pass_first=2, delay_first=1, delay_seconds=3 * SHORT_TIMEOUT, delay_after_forward=True,
        only_methods=("PUT",),
    )
    outcome = "published"
    try:
        publish_model(store, simple_model(2.0))
    except ConcurrentUpdate:
        outcome = "reported as lost"
    assert proxy.plan.count("PUT") == 4
    proxy.plan.reset(pass_first=0, delay_first=0, only_methods=())
    found = read_pointer(store)
    assert found is not None
    loaded = load_latest(store)
    assert loaded.model.to_json() == simple_model(2.0).to_json()
    assert outcome == "published"
    assert found[0].model_version == loaded.version


@pytest.mark.parametrize("lost", ["artefact", "metadata"])
def test_a_lost_create_response_is_recognised_only_by_its_exact_content(
    s3_url: str, proxy: FaultProxy, backoffs: List[int], lost: str
) -> None:
    """A create-only PUT is applied but its response never arrives; the retry gets 412.

    The object then holds exactly the bytes this publish wrote, so it is ours and the
    publish goes on; the pointer names a model whose checksums match.
    """
    store = open_store(s3_url, max_attempts=3, timeout_seconds=SHORT_TIMEOUT)
    publish_model(store, simple_model(1.0))
    proxy.plan.reset(
        pass_first=["artefact", "metadata"].index(lost), delay_first=1,
        delay_seconds=3 * SHORT_TIMEOUT, delay_after_forward=True, only_methods=("PUT",),
    )
    pointer = publish_model(store, simple_model(2.0))
    assert proxy.plan.count("PUT") == 4
    proxy.plan.reset(pass_first=0, delay_first=0, only_methods=())
    loaded = load_latest(store)
    assert loaded.pointer == pointer
    assert loaded.model.to_json() == simple_model(2.0).to_json()


# --- the stages under store faults (subprocesses through the proxy) ------------------------------

NO_BACKOFF = ("--no-backoff",)
DEFAULT_ATTEMPTS = DEFAULT_MAX_ATTEMPTS


@pytest.fixture
def published(s3_url: str, s3_endpoint: str) -> Store:
    """A tranche and a published model, written straight to the S3 server (not the proxy)."""
    store = open_store(s3_url)
    store.write_bytes(tranche_key("2026-11-13T23:00:00"), simulate_tranche(1000, seed=3).to_csv())
    publish_model(store, simple_model(1.0))
    return store


def _stage_env(aws_env: Dict[str, str], proxy: FaultProxy) -> Dict[str, str]:
    return stage_env(dict(aws_env, AWS_ENDPOINT_URL=proxy.url))


@pytest.mark.parametrize("failing", ["everything", pytest.param("writes", marks=full_only)])
def test_train_out_of_retries_exits_non_zero_and_changes_nothing(
    s3_url: str, published: Store, proxy: FaultProxy, aws_env: Dict[str, str], failing: str
) -> None:
    before = snapshot(published)
    methods = () if failing == "everything" else ("PUT",)
    proxy.plan.reset(fail_all=True, only_methods=methods)
    done = run_stage("pipeline.train_model", [s3_url], _stage_env(aws_env, proxy), NO_BACKOFF)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    errors = error_lines(output)
    assert len(errors) == 1 and "SlowDown" in errors[0] and "s3://" in errors[0], output
    assert "Traceback" not in output
    assert proxy.plan.count(methods[0] if methods else None) == DEFAULT_ATTEMPTS
    assert output.count("retry-backoff") == DEFAULT_ATTEMPTS - 1
    proxy.plan.reset(fail_all=False, only_methods=())
    assert snapshot(published) == before


@full_only
def test_train_losing_the_pointer_write_leaves_the_previous_model(
    s3_url: str, published: Store, proxy: FaultProxy, aws_env: Dict[str, str]
) -> None:
    """Artefact and metadata land, every attempt at the pointer fails: nothing half-published."""
    before = snapshot(published)
    proxy.plan.reset(pass_first=2, fail_all=True, only_methods=("PUT",))
    done = run_stage("pipeline.train_model", [s3_url], _stage_env(aws_env, proxy), NO_BACKOFF)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert len(error_lines(output)) == 1, output
    assert proxy.plan.count("PUT") == 2 + DEFAULT_ATTEMPTS
    proxy.plan.reset(pass_first=0, fail_all=False, only_methods=())
    after = snapshot(published)
    assert after["models/latest.json"] == before["models/latest.json"]
    assert {k: v for k, v in after.items() if k in before} == before
    new = sorted(set(after) - set(before))
    assert len(new) == 2 and new[0].endswith("metadata.json") and new[1].endswith("model.json")
    assert load_latest(published).pointer == read_pointer(published)[0]  # type: ignore[index]


def test_serve_refuses_to_start_when_the_store_keeps_failing(
    s3_url: str, published: Store, proxy: FaultProxy, aws_env: Dict[str, str]
) -> None:
    proxy.plan.reset(fail_all=True)
    done = run_stage(
        "pipeline.serve_model", [s3_url, "--host", "127.0.0.1", "--port", "0"],
        _stage_env(aws_env, proxy), NO_BACKOFF,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    errors = error_lines(output)
    assert len(errors) == 1 and "SlowDown" in errors[0] and s3_url in errors[0], output
    assert "Traceback" not in output and "Uvicorn running" not in output
    assert proxy.plan.count() == DEFAULT_ATTEMPTS


def test_running_service_keeps_its_model_when_refresh_fails(
    s3_url: str, published: Store, proxy: FaultProxy, aws_env: Dict[str, str], tmp_path: Path
) -> None:
    first = load_latest(published).version
    env = _stage_env(aws_env, proxy)
    with ServeProcess(s3_url, env, tmp_path, args=refreshing(0.2), faults=NO_BACKOFF) as service:
        service.wait_listening()
        assert service.served_version() == first
        proxy.plan.reset(fail_all=True)
        seen = len(service.output())
        second = publish_model(published, simple_model(2.0))  # straight to the S3 server
        assert service.wait_for_log("SlowDown", after=seen), service.output()
        failed_polls = proxy.plan.count()
        assert failed_polls >= DEFAULT_ATTEMPTS
        assert service.served_version() == first
        status, health = service.call("GET", "/health")
        assert status == 200 and health["model_version"] == first
        assert health["refresh"]["last_outcome"] == "failed"
        proxy.plan.reset(fail_all=False)
        assert service.wait_for_log(second.model_version), service.output()
        assert service.served_version() == second.model_version
        assert "Traceback" not in service.output()
