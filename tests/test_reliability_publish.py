"""Crash mid-publish and racing publishers (issue 5, item 4).

train_model is killed (os._exit, no clean-up) just before it writes the artefact, the
metadata or the pointer: the pointer still names the previous, complete model, which
verifies, and the next run publishes normally.

Several processes read the same pointer, meet at a barrier and publish at once with
artefacts.publish (conditional pointer write: If-Match/If-None-Match on S3, a locked
compare-and-swap with an atomic rename on the local store). Exactly one wins; every
other one gets ConcurrentUpdate; the pointer names the winner and verifies.

Four whole train_model runs start at once on one store, trial after trial (issue 12):
the runs that exit 0 as published moved the pointer one after another, the others
exit 7 with one ERROR line, every model object is intact and the pointer's model loads.
"""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Tuple

import pytest

from pipeline.artefacts import POINTER_KEY, load_latest, load_pointed, read_pointer
from pipeline.metadata import Metadata
from pipeline.simulate import simulate_tranche, tranche_key
from pipeline.store import ConcurrentUpdate, open_store
from testing_support.models import publish_model, simple_model
from testing_support.races import race_problems
from testing_support.stage_faults import EXIT_CRASHED
from testing_support.stages import REPO_ROOT, run_stage, stage_env
from testing_support.stores import snapshot
from tests.reliability_support import assert_verifies, full_only

CONTENDERS = 4
ROUNDS = 3
CRASH_POINTS = {
    "before-artefact": "models/*/model.json",
    "before-metadata": "models/*/metadata.json",
    "before-pointer": POINTER_KEY,
}


@pytest.mark.parametrize(
    "store_kind, crash",
    [("local", "before-pointer"),
     pytest.param("local", "before-artefact", marks=full_only),
     pytest.param("local", "before-metadata", marks=full_only),
     pytest.param("s3", "before-pointer", marks=full_only)],
)
def test_train_killed_mid_publish_leaves_the_previous_model(
    request: pytest.FixtureRequest, store_kind: str, crash: str
) -> None:
    url = str(request.getfixturevalue(f"{store_kind}_url"))
    aws = request.getfixturevalue("aws_env") if store_kind == "s3" else {}
    store = open_store(url)
    store.write_bytes(tranche_key("2026-11-13T23:00:00"), simulate_tranche(1000, seed=4).to_csv())
    previous = publish_model(store, simple_model(1.0))
    before = snapshot(store)
    env = stage_env(aws)
    done = run_stage("pipeline.train_model", [url], env,
                     faults=("--exit-on-write", CRASH_POINTS[crash]))
    assert done.returncode == EXIT_CRASHED, done.stderr
    assert "crashing before writing" in done.stderr
    after = snapshot(store)
    assert after["models/latest.json"] == before["models/latest.json"]
    assert {k: v for k, v in after.items() if k in before} == before
    assert_verifies(load_latest(store), previous)
    new = sorted(set(after) - set(before))
    assert len(new) == {"before-artefact": 0, "before-metadata": 1, "before-pointer": 2}[crash]
    if crash == "before-pointer":
        # The orphaned pair is complete: it verifies as a model in its own right.
        metadata_key, model_key = new
        metadata = json.loads(store.read_bytes(metadata_key))
        orphan = previous.__class__(
            metadata["model_version"], model_key, metadata["model_sha256"], metadata_key,
            after[metadata_key], "orphan",
        )
        load_pointed(store, orphan)
        # And the next run is not blocked by it.
        again = run_stage("pipeline.train_model", [url], env)
        assert again.returncode == 0, again.stderr
        assert load_latest(store).version != previous.model_version


def _contend(url: str, scale: float, barrier: Any, results: Any) -> None:
    """One publisher: read the pointer, wait for the others, publish over what it read."""
    from pipeline.artefacts import make_model_version, publish, sha256_hex

    store = open_store(url)
    found = read_pointer(store)
    token = None if found is None else found[1]
    model = simple_model(scale)
    data = model.to_json()
    when = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=scale)
    digest = sha256_hex(data)
    metadata = Metadata(model_version=make_model_version(when, digest), model_sha256=digest)
    if hasattr(store, "client"):
        store.client  # noqa: B018  (build the client before the race, not during it)
    barrier.wait(timeout=20)
    try:
        pointer = publish(store, data, metadata, when, token)
    except ConcurrentUpdate as exc:
        results.put(("lost", scale, str(exc)))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(("error", scale, repr(exc)))
    else:
        results.put(("won", scale, pointer.model_version))


def _race(url: str, first_scale: float) -> List[Tuple[str, float, str]]:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(CONTENDERS)
    results = context.Queue()
    workers = [
        context.Process(target=_contend, args=(url, first_scale + i, barrier, results))
        for i in range(CONTENDERS)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0
    return outcomes


@pytest.mark.parametrize("existing", [False, True], ids=["first-publish", "over-a-model"])
def test_racing_publishers_leave_one_winner_and_a_consistent_pointer(
    store_url: str, existing: bool
) -> None:
    store = open_store(store_url)
    if existing:
        publish_model(store, simple_model(0.5))
    for round_ in range(ROUNDS):
        outcomes = _race(store_url, first_scale=1.0 + 10 * round_)
        kinds = sorted(kind for kind, _, _ in outcomes)
        assert kinds == ["lost"] * (CONTENDERS - 1) + ["won"], outcomes
        winner = next(version for kind, _, version in outcomes if kind == "won")
        found = read_pointer(store)
        assert found is not None and found[0].model_version == winner
        assert_verifies(load_latest(store), found[0])
        assert all(POINTER_KEY in message for kind, _, message in outcomes if kind == "lost")


def test_a_loser_leaves_only_complete_unreferenced_objects(store_url: str) -> None:
    store = open_store(store_url)
    publish_model(store, simple_model(1.0))
    found = read_pointer(store)
    assert found is not None
    stale_token = found[1]
    winner = publish_model(store, simple_model(2.0))
    from pipeline.artefacts import make_model_version, publish, sha256_hex

    data = simple_model(3.0).to_json()
    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    digest = sha256_hex(data)
    version = make_model_version(when, digest)
    with pytest.raises(ConcurrentUpdate):
        publish(store, data, Metadata(model_version=version, model_sha256=digest), when,
                stale_token)
    assert load_latest(store).version == winner.model_version
    keys = store.list_keys("models/")
    assert f"models/{version}/model.json" in keys
    assert store.read_bytes(f"models/{version}/model.json") == data


def test_pointer_written_by_a_racer_always_verifies(store_url: str) -> None:
    store = open_store(store_url)
    outcomes = _race(store_url, first_scale=100.0)
    found = read_pointer(store)
    assert found is not None
    loaded = load_pointed(store, found[0])
    won = [o for o in outcomes if o[0] == "won"]
    assert len(won) == 1
    expected = simple_model(won[0][1])
    assert loaded.model.to_json() == expected.to_json()


RACE_TRIALS = 20
RACE_TRAIN_ARGS = ("--folds", "2", "--no-refit")  # the same publishing, less fitting


def _race_stores(url: str, trials: int) -> List[Tuple[str, object]]:
    """One store per trial, each with a tranche; every other one over a published model."""
    stores = []
    for trial in range(trials):
        trial_url = f"{url}/trial-{trial:02d}"
        store = open_store(trial_url)
        store.write_bytes(tranche_key("2026-11-27T23:00:00"),
                          simulate_tranche(300, seed=trial).to_csv())
        initial = publish_model(store, simple_model(2.0)).model_version if trial % 2 else None
        stores.append((trial_url, initial))
    return stores


def test_four_train_runs_at_once_never_corrupt_the_store(
    local_url: str, s3_url: str, aws_env: Dict[str, str]
) -> None:
    trials = {kind: _race_stores(url, RACE_TRIALS) for kind, url in
              (("local", local_url), ("s3", s3_url))}
    runners = {
        kind: subprocess.Popen(
            [sys.executable, "-m", "testing_support.races", "--contenders", "4",
             *(url for url, _ in stores), "--", *RACE_TRAIN_ARGS],
            cwd=REPO_ROOT, env=stage_env(aws_env), stdout=subprocess.PIPE, text=True,
        )
        for kind, stores in trials.items()
    }
    outcomes = {kind: runner.communicate(timeout=600)[0] for kind, runner in runners.items()}
    problems, lost = [], 0
    for kind, stores in trials.items():
        assert runners[kind].returncode == 0
        lines = [json.loads(line) for line in outcomes[kind].splitlines()]
        assert [line["url"] for line in lines] == [url for url, _ in stores]
        for line, (url, initial) in zip(lines, stores):
            problems += [f"{kind} {url}: {p}" for p in
                         race_problems(open_store(url), line["runs"], initial)]
            lost += sum(run["exit"] == 7 for run in line["runs"])
    assert problems == []
    assert lost > 0  # the runs did meet: some lost the race
