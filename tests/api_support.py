"""Helpers for the API tests: small models published into a local store, and apps over them.

Not a test module: imported by tests/test_api_*.py.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pipeline.api.app import create_app
from pipeline.api.fastpath import PredictionLayer
from pipeline.api.settings import ServeSettings
from pipeline.artefacts import (
    LoadedModel,
    load_latest,
    make_model_version,
    read_pointer,
    sha256_hex,
)
from pipeline.model_format import (
    FORMAT,
    DispatchModel,
    OrdersRange,
    trained_ranges,
    upper_bound_curve,
    with_bounds,
)
from pipeline.simulate import DEFAULT_PRODUCT_CODES, simulate_tranche
from pipeline.store import Store, open_store
from pipeline.training.estimator import fit_model
from tests.conftest import publish_document, publish_unchecked

SINGLE = "/api/v0.1/time_to_dispatch"
BATCH = "/api/v0.1/time_to_dispatch/batch"
CODES: Tuple[str, ...] = DEFAULT_PRODUCT_CODES
TRAINED_AT = datetime(2026, 11, 20, 23, 0, tzinfo=timezone.utc)


def with_test_bounds(
    model: DispatchModel, ranges: Optional[Mapping[str, OrdersRange]] = None
) -> DispatchModel:
    """The model as format version 2, built here rather than by training: a p90 bound per
    code (1.25 x the estimate + 0.5 h) and trained ranges (given, or each curve's end knots)."""
    bounds = {
        code: upper_bound_curve(curve, curve.knots, [1.25 * v + 0.5 for v in curve.values])
        for code, curve in model.curves.items()
    }
    known = ranges or {code: (c.knots[0], c.knots[-1]) for code, c in model.curves.items()}
    return with_bounds(model, bounds, known)


def v1_artefact(model: DispatchModel) -> bytes:
    """The model's curves as a format version 1 artefact (no bounds, no ranges)."""
    document = {
        "format": FORMAT,
        "format_version": 1,
        "feature": "orders_placed",
        "target": "hours_to_dispatch",
        "curves": {
            code: {"knots": list(curve.knots), "values": list(curve.values)}
            for code, curve in sorted(model.curves.items())
        },
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@lru_cache(maxsize=None)
def model_bytes(seed: int = 1, codes: Tuple[str, ...] = CODES, version: int = 2) -> bytes:
    """A model fitted on a simulated 1,000-row tranche, as artefact bytes (cached).

    Version 2 (the default) adds test bounds and the tranche's ranges; 1 is the old format.
    """
    tranche = simulate_tranche(1000, seed=seed, product_codes=codes)
    orders = tranche.orders_placed.astype(np.float64)
    fit = fit_model(tranche.product_code, orders, tranche.hours_to_dispatch, random_state=seed)
    if version == 1:
        return v1_artefact(fit.model)
    ranges = trained_ranges(list(tranche.product_code), orders)
    return with_test_bounds(fit.model, ranges).to_json()


def publish_model(
    store: Store,
    seed: int = 1,
    codes: Tuple[str, ...] = CODES,
    trained_at: datetime = TRAINED_AT,
    extra: Optional[Dict[str, Any]] = None,
    version: int = 2,
) -> str:
    """Publish a fitted model as train_model does (pointer last); its model_version."""
    data = model_bytes(seed, codes, version)
    version = make_model_version(trained_at, sha256_hex(data))
    metadata: Dict[str, Any] = {
        "model_version": version,
        "model_sha256": sha256_hex(data),
        "created_at": trained_at.isoformat(),
        "tranche": {"key": "datasets/time_to_dispatch_2026-11-20T23:00:00.csv", "rows": 1000},
        "metrics": {"mae": 0.41, "r2": 0.93},
    }
    metadata.update(extra or {})
    found = read_pointer(store)
    token = found[1] if found else None
    publish_document(store, data, metadata, trained_at + timedelta(minutes=1), token)
    return version


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
    metadata: Dict[str, Any] = {
        "model_version": version, "model_sha256": metadata_sha or sha256_hex(artefact),
        **(extra or {}),
    }
    found = read_pointer(store)
    token = found[1] if found else None
    if metadata_sha is None:
        publish_document(store, artefact, metadata, TRAINED_AT, token)
    else:
        publish_unchecked(store, version, artefact, metadata_sha)


def new_store(
    tmp_path: Path, seed: int = 1, codes: Tuple[str, ...] = CODES, version: int = 2
) -> Store:
    """A local store under tmp_path with one published model (artefact format ``version``)."""
    root = tmp_path / "store"
    root.mkdir(exist_ok=True)
    store = open_store(str(root))
    publish_model(store, seed, codes, version=version)
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
