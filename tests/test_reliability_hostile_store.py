"""Hostile store content (issue 5, item 2): a planted artefact is refused and never runs.

The artefact is replaced by a malicious pickle (whose loading would create a marker
file) or by arbitrary bytes, either with every checksum fixed up to match (an attacker
with write access) or without (a checksum mismatch). Readers refuse it at start-up
(serve_model exits non-zero with one ERROR line) and at refresh (the served model
stays); the marker file never appears.
"""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path
import pytest

from pipeline.artefacts import POINTER_KEY, ModelUnavailable, load_latest, sha256_hex
from pipeline.store import open_store
from testing_support.models import (
    malicious_pickle, publish_model, random_bytes, replace_in_place, simple_model,
)
from testing_support.servers import ServeProcess, refreshing
from testing_support.stages import error_lines, run_stage, stage_env
from tests.reliability_support import full_only, plant_hostile

CONTENTS = ["pickle", "random"]
CHECKSUMS = ["matching", "stale"]


def _content(kind: str, marker: Path) -> bytes:
    return malicious_pickle(str(marker)) if kind == "pickle" else random_bytes(seed=5)


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The control: loading the payload with pickle really creates the marker."""
    marker = tmp_path / "control"
    pickle.loads(malicious_pickle(str(marker)))
    assert marker.exists()


@pytest.mark.parametrize("checksum", CHECKSUMS)
@pytest.mark.parametrize("kind", CONTENTS)
@pytest.mark.parametrize("where", ["new-version", "in-place"])
def test_hostile_artefact_is_refused_by_every_reader(
    store_url: str, tmp_path: Path, kind: str, checksum: str, where: str
) -> None:
    store = open_store(store_url)
    publish_model(store, simple_model(1.0))
    marker = tmp_path / "pwned"
    content = _content(kind, marker)
    if where == "new-version":
        plant_hostile(store, content, checksum, "20990101-000000-hostile0")
    else:
        replace_in_place(store, content, checksum)
    expected = "checksum mismatch" if checksum == "stale" else "unreadable"
    with pytest.raises(ModelUnavailable, match=expected):
        load_latest(store)
    assert not marker.exists()


@pytest.mark.parametrize("kind", CONTENTS)
def test_hostile_metadata_with_matching_checksums_is_refused(
    local_url: str, tmp_path: Path, kind: str
) -> None:
    store = open_store(local_url)
    good = publish_model(store, simple_model(1.0))
    marker = tmp_path / "pwned"
    content = _content(kind, marker)
    store.write_bytes(good.metadata_key, content)
    forged = replace(good, metadata_sha256=sha256_hex(content))
    store.write_bytes(POINTER_KEY, forged.to_json())
    with pytest.raises(ModelUnavailable, match="unreadable"):
        load_latest(store)
    assert not marker.exists()


@pytest.mark.parametrize(
    "store_kind, kind, checksum",
    [("local", "pickle", "matching"),
     pytest.param("s3", "random", "stale", marks=full_only),
     pytest.param("s3", "pickle", "matching", marks=full_only),
     pytest.param("local", "random", "stale", marks=full_only)],
)
def test_serve_refuses_to_start_on_hostile_content(
    request: pytest.FixtureRequest, tmp_path: Path, store_kind: str, kind: str, checksum: str
) -> None:
    store_url = str(request.getfixturevalue(f"{store_kind}_url"))
    aws_env = request.getfixturevalue("aws_env") if store_kind == "s3" else {}
    store = open_store(store_url)
    publish_model(store, simple_model(1.0))
    marker = tmp_path / "pwned"
    replace_in_place(store, _content(kind, marker), checksum)
    done = run_stage("pipeline.serve_model", [store_url, "--host", "127.0.0.1", "--port", "0"],
                     stage_env(aws_env), timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    errors = error_lines(output)
    assert len(errors) == 1, output
    assert ("checksum mismatch" if checksum == "stale" else "unreadable") in errors[0]
    assert "Traceback" not in output
    assert "Uvicorn running" not in output
    assert not marker.exists()


@pytest.mark.parametrize("store_kind", ["local", pytest.param("s3", marks=full_only)])
def test_refresh_ignores_hostile_content_and_keeps_serving(
    request: pytest.FixtureRequest, tmp_path: Path, store_kind: str
) -> None:
    store_url = str(request.getfixturevalue(f"{store_kind}_url"))
    aws_env = request.getfixturevalue("aws_env") if store_kind == "s3" else {}
    store = open_store(store_url)
    first = publish_model(store, simple_model(1.0))
    marker = tmp_path / "pwned"
    env = stage_env(aws_env)
    with ServeProcess(store_url, env, tmp_path, args=refreshing(0.2)) as service:
        service.wait_listening()
        assert service.served_version() == first.model_version
        for number, (kind, checksum) in enumerate(
            [(k, c) for k in CONTENTS for c in CHECKSUMS]
        ):
            version = f"20990101-00000{number}-hostile{number}"
            seen = len(service.output())
            plant_hostile(store, _content(kind, marker), checksum, version)
            assert service.wait_for_log(version, after=seen), service.output()
            assert service.served_version() == first.model_version
            status, health = service.call("GET", "/health")
            assert status == 200 and health["model_version"] == first.model_version
        # The control: a genuine model published now is picked up, so refresh was live.
        second = publish_model(store, simple_model(2.0))
        assert service.wait_for_log(second.model_version), service.output()
        assert service.served_version() == second.model_version
        assert "Traceback" not in service.output()
    assert not marker.exists()
