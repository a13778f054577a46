"""Prometheus metrics, counted in plain Python on the hot path and exposed on scrape.

Requests are counted by the event loop's thread only (the request handlers and
``/metrics`` all run there), so plain integers need no lock; the collector turns
them into Prometheus families when scraped.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pipeline.model_format import CATALOGUE_BASIS

REJECTED = "rejected"
UNKNOWN_ANSWERS = (REJECTED, CATALOGUE_BASIS)
LATENCY_BUCKETS: Tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)


class Series:
    """Count, sum and bucket counts of one (endpoint, status) latency histogram."""

    __slots__ = ("count", "total", "buckets")

    def __init__(self, size: int) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * size

    def observe(self, seconds: float) -> None:
        """Record one request's duration."""
        self.count += 1
        self.total += seconds
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1


class ModelQuality(NamedTuple):
    """What training recorded that the alert rules judge: the replaced model's promise, coverage."""

    previous_heldout_mae: Optional[float] = None
    coverage_p90: Optional[float] = None
    coverage_min: Optional[float] = None


class ModelFacts:
    """What the collector reports about the served model, read at scrape time."""

    def __init__(
        self, version: str, trained_at: Optional[float], loaded_at: float,
        heldout_mae: Optional[float] = None, previous_version: Optional[str] = None,
        previous_realised_mae: Optional[float] = None, quality: Optional[ModelQuality] = None,
        refresh_behind: bool = False,
    ) -> None:
        self.version = version
        self.trained_at = trained_at
        self.loaded_at = loaded_at
        self.heldout_mae = heldout_mae
        self.previous_version = previous_version
        self.previous_realised_mae = previous_realised_mae
        self.quality = quality or ModelQuality()
        self.refresh_behind = refresh_behind


class ApiMetrics(Collector):
    """Requests, latency, predictions and model facts as one Prometheus collector."""

    def __init__(self, model_facts: Callable[[], ModelFacts]) -> None:
        self._series: Dict[Tuple[str, int], Series] = {}
        self.predictions: Dict[str, int] = {}
        self.unknown: Dict[str, int] = dict.fromkeys(UNKNOWN_ANSWERS, 0)
        self.refreshes: Dict[str, int] = {}
        self._model_facts = model_facts
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def series(self, endpoint: str, status: int) -> Series:
        """The histogram of an endpoint and status, created on first use."""
        key = (endpoint, status)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = Series(len(LATENCY_BUCKETS) + 1)
        return found

    def count_predictions(self, endpoint: str, rows: int) -> None:
        """Add to the predictions served by an endpoint."""
        self.predictions[endpoint] = self.predictions.get(endpoint, 0) + rows

    def count_unknown(self, parts: int, from_catalogue: bool) -> None:
        """Add to the unknown product codes asked for, by how they were answered."""
        answer = CATALOGUE_BASIS if from_catalogue else REJECTED
        self.unknown[answer] += parts

    def count_refresh(self, outcome: str) -> None:
        """Count one model refresh check by its outcome."""
        self.refreshes[outcome] = self.refreshes.get(outcome, 0) + 1

    def exposition(self) -> bytes:
        """The Prometheus text for a scrape."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """The families of this collector, computed now."""
        requests = CounterMetricFamily(
            "ttd_http_requests", "HTTP requests answered", labels=["endpoint", "status"]
        )
        latency = HistogramMetricFamily(
            "ttd_http_request_duration_seconds",
            "Time from request to response",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), series in sorted(self._series.items()):
            requests.add_metric([endpoint, str(status)], series.count)
            cumulative = 0
            buckets: List[Tuple[str, float]] = []
            for bound, count in zip(LATENCY_BUCKETS + (float("inf"),), series.buckets):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([endpoint, str(status)], buckets, series.total)
        predictions = CounterMetricFamily(
            "ttd_predictions", "Estimates returned (batch rows count one each)", labels=["endpoint"]
        )
        for endpoint, rows in sorted(self.predictions.items()):
            predictions.add_metric([endpoint], rows)
        unknown = CounterMetricFamily(
            "ttd_unknown_product_codes",
            "Product codes asked for that the served model does not know (single requests and "
            "batch rows), by answer: rejected (a 422 or a null row) or catalogue (its curve)",
            labels=["answer"],
        )
        for answer, parts in self.unknown.items():
            unknown.add_metric([answer], parts)
        refreshes = CounterMetricFamily(
            "ttd_model_refresh_checks", "Model refresh checks by outcome", labels=["outcome"]
        )
        for outcome, count in sorted(self.refreshes.items()):
            refreshes.add_metric([outcome], count)
        facts = self._model_facts()
        info = InfoMetricFamily("ttd_model", "The model being served")
        info.add_metric([], {"model_version": facts.version})
        now = time.time()
        age = GaugeMetricFamily(
            "ttd_model_age_seconds", "Seconds since the served model was created (NaN: unknown)"
        )
        age.add_metric([], now - facts.trained_at if facts.trained_at is not None else float("nan"))
        loaded = GaugeMetricFamily(
            "ttd_model_loaded_timestamp_seconds", "When the served model was loaded (Unix time)"
        )
        loaded.add_metric([], facts.loaded_at)
        behind = GaugeMetricFamily(
            "ttd_model_refresh_behind",
            "1 while the last refresh check could not read the pointer or the pointer names a "
            "model this replica refused to load (it keeps serving its own), else 0",
        )
        behind.add_metric([], 1.0 if facts.refresh_behind else 0.0)
        yield from (requests, latency, predictions, unknown, refreshes, info, age, loaded, behind)
        yield from accuracy_gauges(facts)


def seconds(hours: Optional[float]) -> Optional[float]:
    """Hours (as training records errors) in Prometheus' base unit, seconds."""
    return None if hours is None else hours * 3600.0


def accuracy_gauges(facts: ModelFacts) -> Iterator[Metric]:
    """Held-out MAE, the predecessor's realised and promised MAE, p90 coverage, when known."""
    served = (["model_version"], [facts.version])
    replaced = (["model_version", "previous_model_version"],
                [facts.version, facts.previous_version or ""])
    quality = facts.quality
    for name, about, (labels, values), value in (
        ("ttd_model_heldout_mae_seconds",
         "Held-out MAE of the served model, recorded by training", served,
         seconds(facts.heldout_mae)),
        ("ttd_model_previous_realised_mae_seconds",
         "MAE of the model the served one replaced, on the served model's training tranche",
         replaced, seconds(facts.previous_realised_mae)),
        ("ttd_model_previous_heldout_mae_seconds",
         "Held-out MAE the replaced model promised when it was trained",
         replaced, seconds(quality.previous_heldout_mae)),
        ("ttd_model_heldout_coverage_p90",
         "Share of held-out dispatches within the served model's p90 bound, recorded by training",
         served, quality.coverage_p90),
        ("ttd_model_coverage_p90_minimum",
         "The held-out p90 coverage the training gate required (train_model --coverage-min)",
         served, quality.coverage_min),
    ):
        if value is not None:
            gauge = GaugeMetricFamily(name, about, labels=labels)
            gauge.add_metric(values, value)
            yield gauge
