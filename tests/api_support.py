"""Helpers for the API tests: small models published into a local store, and apps over them.

Not a test module: imported by tests/test_api_*.py. Models and publishing come from
``testing_support`` (shared with the benchmarks).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipeline.api.app import create_app
from pipeline.api.fastpath import PredictionLayer
from pipeline.api.settings import ServeSettings
from pipeline.artefacts import LoadedModel, load_latest, sha256_hex
from pipeline.simulate import DEFAULT_PRODUCT_CODES
from pipeline.store import Store, open_store
from testing_support.models import model_bytes, plant_model, publish_document, publish_model

SINGLE = "/api/v0.1/time_to_dispatch"
BATCH = "/api/v0.1/time_to_dispatch/batch"
CODES: Tuple[str, ...] = DEFAULT_PRODUCT_CODES
TRAINED_AT = datetime(2026, 11, 20, 23, 0, tzinfo=timezone.utc)


def publish_fitted(
    store: Store,
    seed: int = 1,
    codes: Tuple[str, ...] = CODES,
    trained_at: datetime = TRAINED_AT,
    extra: Optional[Dict[str, Any]] = None,
    version: int = 2,
) -> str:
    """Publish a fitted model (artefact format ``version``) with the tranche and metrics the
    API tests read, and ``extra`` metadata as given; its model_version."""
    metadata = {
        "tranche": {"key": "datasets/time_to_dispatch_2026-11-20T23:00:00.csv", "rows": 1000},
        "metrics": {"mae": 0.41, "r2": 0.93},
        **(extra or {}),
    }
    pointer = publish_model(store, model_bytes(seed, codes, version), trained_at, metadata,
                            published_at=trained_at + timedelta(minutes=1))
    return pointer.model_version


def publish_raw(
    store: Store,
    version: str,
    artefact: bytes,
    metadata_sha: Optional[str] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> None:
    """Publish arbitrary artefact bytes (e.g. a broken model) under a version.

    With ``metadata_sha`` the metadata and pointer record that checksum instead of the
    artefact's, as a corrupted or tampered artefact would look; ``extra`` adds metadata.
    """
    if metadata_sha is not None:
        plant_model(store, version, artefact, metadata_sha, extra)
        return
    document = {"model_version": version, "model_sha256": sha256_hex(artefact), **(extra or {})}
    publish_document(store, artefact, document, TRAINED_AT)


def new_store(
    tmp_path: Path, seed: int = 1, codes: Tuple[str, ...] = CODES, version: int = 2
) -> Store:
    """A local store under tmp_path with one published model (artefact format ``version``)."""
    root = tmp_path / "store"
    root.mkdir(exist_ok=True)
    store = open_store(str(root))
    publish_fitted(store, seed, codes, version=version)
    return store


def make_app(store: Store, log_path: Optional[Path] = None, **settings: Any) -> PredictionLayer:
    """The app over the store's latest model, logging requests to log_path (or nowhere)."""
    loaded: LoadedModel = load_latest(store)
    settings.setdefault("api_key", None)  # never a key from the developer's environment
    config = ServeSettings(request_log=str(log_path) if log_path else "", **settings)
    return create_app(config, store, loaded)


def log_lines(path: Path) -> List[Dict[str, Any]]:
    """The JSON lines of a request log."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def rows(pairs: Sequence[Tuple[Any, Any]]) -> List[Dict[str, Any]]:
    """Batch rows from (product_code, orders_placed) pairs."""
    return [{"product_code": code, "orders_placed": orders} for code, orders in pairs]
