"""Publishing and loading models: safe order, checksums, clear refusals."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Dict

import pytest

from pipeline.artefacts import (
    POINTER_KEY,
    ModelUnavailable,
    load_latest,
    make_model_version,
    metadata_key,
    model_key,
    publish,
    read_pointer,
    sha256_hex,
)
from pipeline.metadata import Metadata
from pipeline.model_format import Curve, DispatchModel
from pipeline.store import ConcurrentUpdate, ObjectExists, Store, open_store

WHEN = datetime(2026, 11, 20, 23, 30, tzinfo=timezone.utc)


def _model(level: float = 1.0) -> DispatchModel:
    return DispatchModel({"SKU001": Curve((0.0, 100.0), (level, level + 5.0))})


def _publish(store: Store, level: float = 1.0, token: Any = None) -> str:
    data = _model(level).to_json()
    version = make_model_version(WHEN, sha256_hex(data))
    publish(store, data, Metadata(model_version=version, model_sha256=sha256_hex(data)), WHEN,
            token)
    return version


def test_published_model_loads_back_verified(store_url: str) -> None:
    store = open_store(store_url)
    version = _publish(store)
    loaded = load_latest(store)
    assert loaded.version == version
    assert loaded.model.predict(["SKU001"], [50.0]).tolist() == [pytest.approx(3.5)]
    assert loaded.metadata.model_version == version
    assert store.list_keys("models/") == sorted(
        [POINTER_KEY, model_key(version), metadata_key(version)]
    )


def test_version_is_short_and_names_time_hash_and_a_random_suffix() -> None:
    assert make_model_version(WHEN, "abcdef0123456789", "9f3c") == "20261120-233000-abcdef01-9f3c"
    drawn = {make_model_version(WHEN, "abcdef0123456789") for _ in range(50)}
    assert len(drawn) > 1
    assert all(re.fullmatch(r"20261120-233000-abcdef01-[0-9a-f]{4}", v) for v in drawn)


def test_the_same_model_published_twice_in_one_second_keeps_both_intact(store_url: str) -> None:
    store = open_store(store_url)
    first = _publish(store)
    found = read_pointer(store)
    assert found is not None
    second = _publish(store, token=found[1])
    assert second != first
    for version in (first, second):
        metadata = json.loads(store.read_bytes(metadata_key(version)))
        assert metadata["model_version"] == version
        assert sha256_hex(store.read_bytes(model_key(version))) == metadata["model_sha256"]
    assert load_latest(store).version == second


def test_a_version_whose_objects_exist_is_refused_and_left_as_it_was(store_url: str) -> None:
    store = open_store(store_url)
    data = _model().to_json()
    version = make_model_version(WHEN, sha256_hex(data), "0000")
    publish(store, data, Metadata(model_version=version, model_sha256=sha256_hex(data)), WHEN,
            None)
    before = {key: store.read_bytes(key) for key in store.list_keys("")}
    found = read_pointer(store)
    assert found is not None
    rival = Metadata.model_validate(
        {"model_version": version, "model_sha256": sha256_hex(data), "note": "rival"})
    with pytest.raises(ObjectExists, match=f"{version}/metadata.json already exists"):
        publish(store, data, rival, WHEN, found[1])
    assert {key: store.read_bytes(key) for key in store.list_keys("")} == before
    assert load_latest(store).version == version


def test_nothing_published_is_a_clear_refusal(store_url: str) -> None:
    with pytest.raises(ModelUnavailable, match="no model is published.*models/latest.json"):
        load_latest(open_store(store_url))


def test_tampered_artefact_fails_its_checksum(store_url: str) -> None:
    store = open_store(store_url)
    version = _publish(store)
    store.write_bytes(model_key(version), _model(level=9.0).to_json())
    with pytest.raises(ModelUnavailable, match="checksum mismatch.*model.json"):
        load_latest(store)


def test_missing_artefact_is_named(store_url: str) -> None:
    store = open_store(store_url)
    version = _publish(store)
    pointer = json.loads(store.read_bytes(POINTER_KEY))
    pointer["model_key"] = f"models/{version}/gone.json"
    store.write_bytes(POINTER_KEY, json.dumps(pointer).encode())
    with pytest.raises(ModelUnavailable, match="gone.json named by the pointer does not exist"):
        load_latest(store)


def test_malformed_pointer_is_named(local_url: str) -> None:
    store = open_store(local_url)
    store.write_bytes(POINTER_KEY, b"{not json")
    with pytest.raises(ModelUnavailable, match="pointer .*latest.json is malformed"):
        load_latest(store)


def test_artefact_that_is_not_a_model_is_unreadable_even_with_a_matching_checksum(
    local_url: str,
) -> None:
    store = open_store(local_url)
    version = _publish(store)
    junk = b"\x80\x04\x95 a pickle"
    pointer = json.loads(store.read_bytes(POINTER_KEY))
    pointer["model_sha256"] = sha256_hex(junk)
    store.write_bytes(model_key(version), junk)
    store.write_bytes(POINTER_KEY, json.dumps(pointer).encode())
    with pytest.raises(ModelUnavailable, match="unreadable"):
        load_latest(store)


def test_metadata_must_describe_the_artefact_beside_it() -> None:
    data = _model().to_json()
    with pytest.raises(ValueError, match="model_sha256"):
        publish(open_store("/tmp"), data, Metadata(model_version="v", model_sha256="0"), WHEN,
                None)


def test_pointer_that_moved_since_it_was_read_is_not_overwritten(store_url: str) -> None:
    store = open_store(store_url)
    first = _publish(store)
    seen = read_pointer(store)
    assert seen is not None
    second = _publish(store, level=2.0, token=seen[1])
    with pytest.raises(ConcurrentUpdate):
        _publish(store, level=3.0, token=seen[1])
    assert load_latest(store).version == second != first


def test_store_errors_become_model_unavailable(aws_env: Dict[str, str]) -> None:
    with pytest.raises(ModelUnavailable, match="s3://absent-bucket-x/models/latest.json"):
        load_latest(open_store("s3://absent-bucket-x"))
