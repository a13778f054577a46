"""Models to serve and publish: small ones built by hand, fitted ones, a synthetic catalogue, and
one way to publish each (plus the ways an attacker or an older version would write a store)."""
from __future__ import annotations

import json
import pickle
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from pipeline.artefacts import (
    POINTER_KEY, Pointer, make_model_version, metadata_key, model_key, publish_objects,
    read_pointer, sha256_hex,
)
from pipeline.model_format import (
    FORMAT, Curve, DispatchModel, OrdersRange, trained_ranges, upper_bound_curve, with_bounds,
)
from pipeline.simulate import DEFAULT_PRODUCT_CODES, simulate_tranche
from pipeline.store import Store, open_store
from pipeline.training.estimator import fit_model

Codes = Tuple[str, ...]


def simple_model(scale: float = 1.0, codes: Codes = ("SKU001", "SKU002")) -> DispatchModel:
    """A small valid model whose estimates grow with ``scale`` (to tell versions apart)."""
    return DispatchModel({
        code: Curve((0.0, 100.0, 200.0), (scale * (1.0 + i), scale * (3.0 + i), scale * (4.0 + i)))
        for i, code in enumerate(codes)
    })


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


def fitted_model(
    seed: int = 1, rows: int = 1000, codes: Codes = DEFAULT_PRODUCT_CODES, bounded: bool = False,
    **params: Any,
) -> DispatchModel:
    """A model fitted on a simulated tranche (different seeds, different models; ``params`` go
    to the estimator); ``bounded``: format 2, with test bounds and the tranche's ranges."""
    tranche = simulate_tranche(rows, seed=seed, product_codes=codes)
    orders = tranche.orders_placed.astype(np.float64)
    model = fit_model(tranche.product_code, orders, tranche.hours_to_dispatch, **params).model
    if not bounded:
        return model
    return with_test_bounds(model, trained_ranges(list(tranche.product_code), orders))


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
def model_bytes(seed: int = 1, codes: Codes = DEFAULT_PRODUCT_CODES, version: int = 2) -> bytes:
    """A model fitted on a simulated 1,000-row tranche, as artefact bytes (cached).

    Version 2 (the default) adds test bounds and the tranche's ranges; 1 is the old format.
    """
    if version == 1:
        return v1_artefact(fitted_model(seed, codes=codes, random_state=seed))
    return fitted_model(seed, codes=codes, bounded=True, random_state=seed).to_json()


def catalogue_artefact(parts: int, seed: int = 0, version: int = 3) -> bytes:
    """A valid artefact of ``parts`` synthetic parts (codes ``P000000``...), built directly.

    Each part gets a rising curve of 2-4 knots, a p90 bound (1.25 x the estimate + 0.5 h on
    the same knots) and a trained range; format 3 adds a basis per part (every third part
    pooled) and a catalogue curve. Canonical JSON, as ``DispatchModel.to_json`` writes it.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 5, parts)
    steps = np.round(rng.uniform(20.0, 200.0, counts.sum()), 1)
    rises = np.round(rng.uniform(0.0, 3.0, counts.sum()), 3)
    starts = np.concatenate(([0], np.cumsum(counts)))
    curves: Dict[str, Any] = {}
    for i in range(parts):
        lo, hi = starts[i], starts[i + 1]
        knots = np.cumsum(steps[lo:hi]) - steps[lo]
        values = np.round(np.cumsum(rises[lo:hi]) + 0.5, 3)
        spec: Dict[str, Any] = {"knots": knots.tolist(), "values": values.tolist()}
        spec["p90"] = {"knots": spec["knots"], "values": (1.25 * values + 0.5).tolist()}
        spec["orders_placed_range"] = [float(knots[0]), float(knots[-1])]
        if version >= 3:
            spec["basis"] = "pooled" if i % 3 == 2 else "product"
        curves[f"P{i:06d}"] = spec
    document: Dict[str, Any] = {
        "format": FORMAT, "format_version": version, "feature": "orders_placed",
        "target": "hours_to_dispatch", "curves": curves,
    }
    if version >= 3:
        document["catalogue"] = {"knots": [0.0, 100.0], "values": [1.0, 3.0],
                                 "p90": {"knots": [0.0, 100.0], "values": [3.0, 9.0]}}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def publish_model(
    store: Union[Store, str],
    model: Union[DispatchModel, bytes],
    when: Optional[datetime] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    published_at: Optional[datetime] = None,
) -> Pointer:
    """Publish a model (or artefact bytes) over the store's current pointer, as train_model
    publishes: objects created only if absent, the pointer moved last and only if unchanged.

    Its metadata records the version (made from ``when``, default now), the artefact's sha256
    and ``created_at``, then ``metadata``'s fields as given, whatever their shape: the readers
    must cope with what older versions wrote.
    """
    found = open_store(store) if isinstance(store, str) else store
    data = model if isinstance(model, bytes) else model.to_json()
    when = when or datetime.now(timezone.utc)
    document = {"model_version": make_model_version(when, sha256_hex(data)),
                "model_sha256": sha256_hex(data), "created_at": when.isoformat(),
                **(metadata or {})}
    return publish_document(found, data, document, published_at or when)


def publish_document(
    store: Store, artefact: bytes, document: Mapping[str, Any], published_at: datetime
) -> Pointer:
    """Publish artefact bytes with a metadata document written exactly as given (indented,
    keys sorted), over the store's current pointer."""
    pointer = read_pointer(store)
    metadata = json.dumps(document, indent=2, sort_keys=True).encode()
    return publish_objects(store, str(document["model_version"]), artefact, metadata,
                           published_at, None if pointer is None else pointer[1])


def plant_model(
    store: Store, version: str, artefact: bytes, recorded_sha256: str,
    metadata: Optional[Mapping[str, Any]] = None,
) -> Pointer:
    """Point the store at any artefact bytes, its metadata and the pointer recording any
    checksum, as a tampered store is: every object overwritten, nothing checked."""
    document = {"model_version": version, "model_sha256": recorded_sha256, **(metadata or {})}
    metadata_bytes = json.dumps(document).encode()
    store.write_bytes(model_key(version), artefact)
    store.write_bytes(metadata_key(version), metadata_bytes)
    pointer = Pointer(version, model_key(version), recorded_sha256, metadata_key(version),
                      sha256_hex(metadata_bytes), datetime.now(timezone.utc).isoformat())
    store.write_bytes(POINTER_KEY, pointer.to_json())
    return pointer


def replace_in_place(store: Store, content: bytes, checksum: str) -> None:
    """Overwrite the current artefact; with ``"matching"`` also fix up metadata and pointer."""
    found = read_pointer(store)
    assert found is not None
    pointer = found[0]
    store.write_bytes(pointer.model_key, content)
    if checksum == "stale":
        return
    metadata = json.loads(store.read_bytes(pointer.metadata_key))
    metadata["model_sha256"] = sha256_hex(content)
    metadata_bytes = json.dumps(metadata).encode()
    store.write_bytes(pointer.metadata_key, metadata_bytes)
    fixed = Pointer(pointer.model_version, pointer.model_key, sha256_hex(content),
                    pointer.metadata_key, sha256_hex(metadata_bytes), pointer.published_at)
    store.write_bytes(POINTER_KEY, fixed.to_json())


class MarkerPayload:
    """A pickle payload: unpickling it creates a marker file (the proof that code ran)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Tuple[object, Tuple[str, str]]:
        return (open, (self.path, "w"))


def malicious_pickle(marker: str) -> bytes:
    """Pickle bytes whose loading would create ``marker``."""
    return pickle.dumps(MarkerPayload(marker))


def random_bytes(seed: int, size: int = 512) -> bytes:
    """Reproducible arbitrary bytes."""
    return np.random.default_rng(seed).bytes(size)
