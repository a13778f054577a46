"""The service's shared state: the served model slot, metrics, request log and refresh status."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional, Tuple

from pipeline.api.lookup import number
from pipeline.api.metrics import ApiMetrics, ModelFacts, ModelQuality
from pipeline.api.requestlog import RequestLog
from pipeline.api.schemas import RefreshStatus
from pipeline.api.serving import RefreshOutcome, ServingModel
from pipeline.api.settings import ServeSettings
from pipeline.artefacts import Pointer
from pipeline.history import heldout_mae
from pipeline.store import Store


def iso_utc(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC with seconds."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


class ServiceState:
    """Everything the handlers share; ``serving`` is replaced whole, never mutated."""

    def __init__(self, settings: ServeSettings, store: Store, serving: ServingModel) -> None:
        self.settings = settings
        self.store = store
        self.serving = serving
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.metrics = ApiMetrics(self.model_facts)
        self.request_log = RequestLog(settings.request_log)
        self.rejected: Optional[Pointer] = None
        self.refresh = RefreshStatus(
            enabled=settings.model_refresh_seconds > 0,
            interval_seconds=settings.model_refresh_seconds,
        )

    def model_facts(self) -> ModelFacts:
        """The served model's version, times and recorded quality, for the metrics collector."""
        serving = self.serving
        born = serving.trained_at or serving.published_at
        behind = self.rejected is not None or self.refresh.last_outcome in ("failed", "rejected")
        return ModelFacts(
            serving.version, born.timestamp() if born else None, serving.loaded_at,
            *accuracy_facts(serving.metadata), quality=quality_facts(serving.metadata),
            refresh_behind=behind,
        )

    def apply(self, result: RefreshOutcome) -> None:
        """Record a refresh check and swap in its model (one reference assignment)."""
        self.serving = result.serving
        self.rejected = result.rejected
        self.metrics.count_refresh(result.outcome)
        self.refresh = RefreshStatus(
            enabled=self.refresh.enabled,
            interval_seconds=self.refresh.interval_seconds,
            last_checked_at=iso_utc(time.time()),
            last_outcome=result.outcome,
            last_error=result.message
            if result.outcome in ("rejected", "failed")
            else (self.refresh.last_error if result.rejected is not None else None),
        )


def accuracy_facts(
    metadata: Dict[str, Any]
) -> Tuple[Optional[float], Optional[str], Optional[float]]:
    """Held-out MAE, the replaced model's version and its realised MAE, as the metadata says."""
    previous = metadata.get("previous_model")
    version = previous.get("model_version") if isinstance(previous, dict) else None
    return (
        heldout_mae(metadata),
        None if version is None else str(version),
        number_at(metadata, "previous_model", "realised_mae"),
    )


def number_at(metadata: Mapping[str, Any], *path: str) -> Optional[float]:
    """The finite number at a path of keys in the metadata, else None."""
    value: Any = metadata
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return number(value)


def count_at(metadata: Mapping[str, Any], *path: str) -> Optional[int]:
    """The whole number at a path of keys in the metadata, else None."""
    found = number_at(metadata, *path)
    return None if found is None or found != int(found) else int(found)


def heldout_coverage(metadata: Mapping[str, Any]) -> Optional[float]:
    """The p90 bound's overall held-out coverage the metadata records, if any."""
    found = number_at(metadata, "metrics", "held_out", "overall", "coverage_p90")
    return found if found is not None else number_at(
        metadata, "metrics", "held_out", "coverage_p90")


def quality_facts(metadata: Mapping[str, Any]) -> ModelQuality:
    """The replaced model's promised MAE, the bound's coverage and its gate's minimum."""
    return ModelQuality(
        number_at(metadata, "previous_model", "heldout_mae"),
        heldout_coverage(metadata),
        number_at(metadata, "options", "thresholds", "coverage_min"),
    )
