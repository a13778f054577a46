"""What the serving benchmarks share: a free port and a published model to serve."""
from __future__ import annotations

import json
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.artefacts import make_model_version, publish, read_pointer, sha256_hex  # noqa: E402
from pipeline.metadata import Metadata  # noqa: E402
from pipeline.model_format import (  # noqa: E402
    FORMAT, trained_ranges, upper_bound_curve, with_bounds,
)
from pipeline.simulate import simulate_tranche  # noqa: E402
from pipeline.store import open_store  # noqa: E402
from pipeline.training.estimator import fit_model  # noqa: E402


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def publish_model(store_url: str) -> str:
    """Fit a model on a simulated 5,000-row tranche and publish it into the store; its version.

    The model has a p90 bound (a stand-in: 1.25 x the estimate + 0.5 h) and trained ranges
    per code, so every answer carries both new fields.
    """
    tranche = simulate_tranche(5_000, seed=7)
    fit = fit_model(tranche.product_code, tranche.orders_placed, tranche.hours_to_dispatch)
    bounds = {
        code: upper_bound_curve(curve, curve.knots, [1.25 * v + 0.5 for v in curve.values])
        for code, curve in fit.model.curves.items()
    }
    ranges = trained_ranges(list(tranche.product_code), tranche.orders_placed)
    return publish_artefact(store_url, with_bounds(fit.model, bounds, ranges).to_json())


def publish_artefact(store_url: str, data: bytes) -> str:
    """Publish artefact bytes into the store (pointer last, replacing any); its version."""
    store = open_store(store_url)
    now = datetime.now(timezone.utc)
    version = make_model_version(now, sha256_hex(data))
    metadata = Metadata(model_version=version, model_sha256=sha256_hex(data),
                        created_at=now.isoformat())
    found = read_pointer(store)
    publish(store, data, metadata, now, None if found is None else found[1])
    return version


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
