"""Model refresh: a new model is swapped in, a broken one is logged and ignored, the old serves."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from starlette.testclient import TestClient

from pipeline.api.app import refresh_once
from pipeline.api.serving import ServingModel, build_serving_model, refresh_step
from pipeline.artefacts import load_latest
from pipeline.store import Store, StoreError, open_store
from testing_support.models import model_bytes
from tests.api_support import SINGLE, make_app, new_store, publish_fitted, publish_raw

NEW_CODES = ("SKU001", "SKU002", "SKU007")
BODY = {"product_code": "SKU001", "orders_placed": 150}


class FailingStore:
    """A store whose reads fail, as an unreachable bucket does."""

    url = "s3://unreachable"

    def location(self, key: str) -> str:
        return f"{self.url}/{key}"

    def read_versioned(self, key: str) -> Optional[Tuple[bytes, str]]:
        raise StoreError(f"{self.location(key)}: connection timed out")

    def read_bytes(self, key: str) -> bytes:
        raise StoreError(f"{self.location(key)}: connection timed out")

    def list_keys(self, prefix: str) -> List[str]:
        raise StoreError("unreachable")

    def write_bytes(self, key: str, data: bytes) -> None:
        raise StoreError("unreachable")

    def write_if_unchanged(self, key: str, data: bytes, token: Optional[str]) -> None:
        raise StoreError("unreachable")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A local store with one published model."""
    return new_store(tmp_path)


def current(store: Store) -> ServingModel:
    """A ServingModel of the store's latest model."""
    return build_serving_model(load_latest(store))


def test_same_pointer_is_unchanged(store: Store) -> None:
    serving = current(store)
    result = refresh_step(store, serving)
    assert (result.outcome, result.serving) == ("unchanged", serving)


def test_new_model_is_swapped_in(store: Store) -> None:
    serving = current(store)
    version = publish_fitted(store, seed=3, codes=NEW_CODES)
    result = refresh_step(store, serving)
    assert result.outcome == "swapped"
    assert result.serving.version == version != serving.version
    assert result.serving.product_codes == NEW_CODES
    assert result.rejected is None


@pytest.mark.parametrize("breakage", ["checksum", "garbage", "pickle"])
def test_broken_new_model_is_rejected_once_and_the_old_kept(
    store: Store, breakage: str, caplog: pytest.LogCaptureFixture
) -> None:
    serving = current(store)
    if breakage == "checksum":
        publish_raw(store, "20260101-000000-badsum00", model_bytes(3, NEW_CODES), "0" * 64)
    elif breakage == "garbage":
        publish_raw(store, "20260101-000000-garbage0", b"not json at all")
    else:
        publish_raw(store, "20260101-000000-pickle00", b"\x80\x04\x95cos\nsystem\n.")
    with caplog.at_level(logging.ERROR, logger="pipeline.api"):
        result = refresh_step(store, serving)
    assert result.outcome == "rejected"
    assert result.serving is serving
    assert result.rejected is not None
    assert any("still serving " + serving.version in r.getMessage() for r in caplog.records)
    caplog.clear()
    again = refresh_step(store, serving, result.rejected)
    assert (again.outcome, again.serving) == ("unchanged", serving)
    assert not caplog.records


def test_store_failure_keeps_the_model_and_is_retried(store: Store) -> None:
    serving = current(store)
    result = refresh_step(FailingStore(), serving)  # type: ignore[arg-type]
    assert (result.outcome, result.serving, result.rejected) == ("failed", serving, None)


def test_nothing_published_keeps_the_model(store: Store, tmp_path: Path) -> None:
    serving = current(store)
    empty = open_store(str(tmp_path / "empty"))
    assert refresh_step(empty, serving).outcome == "absent"


def test_malformed_pointer_is_rejected(store: Store) -> None:
    serving = current(store)
    store.write_bytes("models/latest.json", b"{not a pointer")
    result = refresh_step(store, serving)
    assert (result.outcome, result.serving) == ("rejected", serving)


def test_app_serves_the_new_model_after_refresh(store: Store) -> None:
    app = make_app(store)
    with TestClient(app) as client:
        old = client.post(SINGLE, json=BODY).json()
        version = publish_fitted(store, seed=3, codes=NEW_CODES)
        assert refresh_once(app.state).outcome == "swapped"
        new = client.post(SINGLE, json=BODY).json()
        assert new["model_version"] == version != old["model_version"]
        added = client.post(SINGLE, json={"product_code": "SKU007", "orders_placed": 1})
        dropped = client.post(SINGLE, json={"product_code": "SKU003", "orders_placed": 1})
        assert (added.status_code, dropped.status_code) == (200, 422)
        health = client.get("/health").json()
    assert health["model_version"] == version
    assert health["refresh"]["last_outcome"] == "swapped"


def test_app_keeps_serving_after_a_broken_model(store: Store) -> None:
    app = make_app(store)
    with TestClient(app) as client:
        old = client.post(SINGLE, json=BODY).json()
        publish_raw(store, "20260101-000000-badsum00", model_bytes(3, NEW_CODES), "0" * 64)
        assert refresh_once(app.state).outcome == "rejected"
        assert refresh_once(app.state).outcome == "unchanged"
        after = client.post(SINGLE, json=BODY).json()
        health = client.get("/health").json()
    assert after == old
    assert health["refresh"]["last_outcome"] == "unchanged"
    assert "checksum mismatch" in health["refresh"]["last_error"]


def test_background_refresh_swaps_while_serving(store: Store) -> None:
    app = make_app(store, model_refresh_seconds=0.05)
    with TestClient(app) as client:
        assert client.get("/health").json()["refresh"]["enabled"] is True
        version = publish_fitted(store, seed=3, codes=NEW_CODES)
        deadline = time.monotonic() + 30.0
        seen = set()
        while time.monotonic() < deadline:
            response = client.post(SINGLE, json=BODY)
            assert response.status_code == 200
            seen.add(response.json()["model_version"])
            if version in seen:
                break
            time.sleep(0.01)
    assert version in seen
