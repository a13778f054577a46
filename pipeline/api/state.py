"""The service's shared state: the served model slot, metrics, request log and refresh status."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Optional, Tuple

from pipeline.api.metrics import ApiMetrics, ModelFacts, ModelQuality
from pipeline.api.requestlog import RequestLog
from pipeline.api.schemas import RefreshStatus
from pipeline.api.serving import RefreshOutcome, ServingModel
from pipeline.api.settings import ServeSettings
from pipeline.artefacts import Pointer
from pipeline.metadata import Metadata, PreviousModel
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
    metadata: Metadata
) -> Tuple[Optional[float], Optional[str], Optional[float]]:
    """Held-out MAE, the replaced model's version and its realised MAE, as the metadata says."""
    previous = metadata.previous_model or PreviousModel()
    return metadata.heldout_mae, previous.model_version, previous.realised_mae


def quality_facts(metadata: Metadata) -> ModelQuality:
    """The replaced model's promised MAE, the bound's coverage and its gate's minimum."""
    previous = metadata.previous_model or PreviousModel()
    return ModelQuality(
        previous.heldout_mae,
        metadata.metrics.held_out.coverage,
        metadata.options.thresholds.coverage_min,
    )
