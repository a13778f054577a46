"""What the serving benchmarks share: a free port and a published model to serve."""
from __future__ import annotations

import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.artefacts import make_model_version, publish, sha256_hex  # noqa: E402
from pipeline.estimator import fit_model  # noqa: E402
from pipeline.model import trained_ranges, upper_bound_curve, with_bounds  # noqa: E402
from pipeline.simulate import simulate_tranche  # noqa: E402
from pipeline.store import open_store  # noqa: E402


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
    data = with_bounds(fit.model, bounds, ranges).to_json()
    now = datetime.now(timezone.utc)
    version = make_model_version(now, sha256_hex(data))
    metadata = {"model_version": version, "model_sha256": sha256_hex(data),
                "created_at": now.isoformat()}
    publish(open_store(store_url), data, metadata, now, None)
    return version
