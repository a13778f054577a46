"""The served model: an immutable bundle of everything the hot path needs, and its refresh.

A :class:`ServingModel` is built once per loaded model (the columnar
:class:`~pipeline.api.lookup.Lookup`, the model's facts) and swapped in with one
reference assignment, so a request that picked one up keeps a consistent view while a
newer one replaces it. Requests are read by :mod:`pipeline.api.predictions`, the same
whatever model is served; a product code the model does not know is answered as the
service's ``unknown_products`` setting says.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import numpy.typing as npt

from pipeline.api.lookup import Lookup, MetadataMismatch, Prepared, prepare, prepare_isolated
from pipeline.api.settings import UNKNOWN_CATALOGUE, UNKNOWN_REJECT, UnknownProducts
from pipeline.artefacts import (
    LoadedModel,
    ModelUnavailable,
    Pointer,
    read_pointer,
    read_verified,
)
from pipeline.metadata import Metadata, parse_time, read_metadata
from pipeline.model_format import BASES, CATALOGUE_BASIS, ModelFormatError
from pipeline.store import Store, StoreError

log = logging.getLogger("pipeline.api")

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


class BatchRows(NamedTuple):
    """A validated batch as columns."""

    product_codes: List[str]
    orders_placed: FloatArray


class BatchAnswer(NamedTuple):
    """A batch's answers in request order; ``answered`` is False for rows left unanswered.

    ``uppers`` is None when no row has a p90 bound, ``outside`` when no row has a trained
    range; ``bounded`` and ``ranged`` say which rows have them (a catalogue answer is
    judged against the whole model's range); ``unknown`` holds the rows whose product code
    the model does not know.
    """

    estimates: FloatArray
    uppers: Optional[FloatArray]
    outside: Optional[BoolArray]
    bases: List[Optional[str]]
    answered: BoolArray
    bounded: BoolArray
    ranged: BoolArray
    unknown: IntArray


@dataclass(frozen=True)
class ServingModel:
    """One loaded model, how unknown parts are answered, and precomputed per-model facts.

    ``summary`` is the metadata document summarised (what ``/api/v0.1/model`` shows) and
    ``metadata`` that summary as the schema reads it, so the facts the service gives are the
    ones it shows (and finite: the summary has no NaN or infinity).
    """

    pointer: Pointer
    metadata: Metadata
    summary: Dict[str, Any]
    lookup: Lookup
    unknown_products: UnknownProducts
    trained_at: Optional[datetime]
    published_at: Optional[datetime]
    loaded_at: float

    @property
    def version(self) -> str:
        """The model_version the API returns."""
        return self.pointer.model_version

    @property
    def product_codes(self) -> Tuple[str, ...]:
        """The product codes the model knows, sorted."""
        return self.lookup.codes

    @property
    def answers_unknown(self) -> bool:
        """Whether parts the model does not know are answered from its catalogue curve."""
        return self.unknown_products == UNKNOWN_CATALOGUE and self.lookup.has_catalogue

    def predict_one(self, product_code: str, orders_placed: float) -> float:
        """The estimate for one validated row of a known code (pure Python)."""
        return self.lookup.estimate(self.lookup.index[product_code], orders_placed)

    def predict_batch(self, rows: BatchRows) -> BatchAnswer:
        """Answers for validated rows, vectorised over all rows (equal to the single answers).

        Rows of unknown codes are answered from the catalogue curve when the service is
        asked to and the model has one, else left unanswered.
        """
        lookup = self.lookup
        n = len(rows.orders_placed)
        which = lookup.positions(rows.product_codes)
        known = which >= 0
        unknown = np.flatnonzero(~known)
        rows_known = np.flatnonzero(known) if len(unknown) else np.arange(n)
        at, x = which[rows_known], rows.orders_placed[rows_known]
        estimates = np.full(n, math.nan)
        uppers = None if lookup.bounds is None else np.full(n, math.nan)
        outside = None if lookup.ranges is None else np.zeros(n, dtype=np.bool_)
        bases: List[Optional[str]] = [None] * n
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are checked
            estimates[rows_known] = here = lookup.curves.evaluate(at, x)
            if uppers is not None and lookup.bounds is not None:
                uppers[rows_known] = np.maximum(lookup.bounds.evaluate(at, x), here)
            if outside is not None and lookup.ranges is not None:
                outside[rows_known] = (x < lookup.ranges[at, 0]) | (x > lookup.ranges[at, 1])
            if lookup.bases is not None:
                names = np.array(BASES, dtype=object)[lookup.bases[at]].tolist()
                for row, name in zip(rows_known.tolist(), names):
                    bases[row] = name
            answered = known.copy()
            bounded = known.copy() if uppers is not None else np.zeros(n, dtype=np.bool_)
            ranged = known.copy()
            if len(unknown) and self.answers_unknown and lookup.catalogue is not None:
                cx = rows.orders_placed[unknown]
                zero = np.zeros(len(unknown), dtype=np.int64)
                estimates[unknown] = guess = lookup.catalogue.curve.evaluate(zero, cx)
                if uppers is None:
                    uppers = np.full(n, math.nan)
                uppers[unknown] = np.maximum(lookup.catalogue.bound.evaluate(zero, cx), guess)
                for row in unknown.tolist():
                    bases[row] = CATALOGUE_BASIS
                answered[:] = True
                bounded[unknown] = True
                trained = lookup.orders_range
                if outside is not None and trained is not None:
                    outside[unknown] = (cx < trained[0]) | (cx > trained[1])
                    ranged[unknown] = True
        return BatchAnswer(estimates, uppers, outside, bases, answered, bounded, ranged, unknown)


def model_age_seconds(serving: ServingModel, now: float) -> Optional[float]:
    """Seconds since the model was created (else published), or None when neither is known."""
    born = serving.trained_at or serving.published_at
    if born is None:
        return None
    age = now - born.timestamp()
    return age if math.isfinite(age) else None


class RefreshOutcome(NamedTuple):
    """What one refresh check found: the model to serve next and why."""

    serving: ServingModel
    outcome: str
    message: str
    rejected: Optional[Pointer]


class LoadFailed(Exception):
    """Loading could not finish for a reason that may pass (a child process died)."""


def serving_from(
    prepared: Prepared,
    pointer: Pointer,
    unknown_products: UnknownProducts = UNKNOWN_REJECT,
) -> ServingModel:
    """The serving bundle of a prepared model (builds the code index in small steps)."""
    metadata = read_metadata(prepared.metadata)
    serving = ServingModel(
        pointer=pointer,
        metadata=metadata,
        summary=prepared.metadata,
        lookup=Lookup(prepared),
        unknown_products=unknown_products,
        trained_at=metadata.created,
        published_at=parse_time(pointer.published_at),
        loaded_at=time.time(),
    )
    if unknown_products == UNKNOWN_CATALOGUE and not serving.lookup.has_catalogue:
        log.warning(
            "unknown products are to be answered from the catalogue curve, but model %s has "
            "none: parts it does not know get a 422", serving.version,
        )
    return serving


def build_serving_model(
    loaded: LoadedModel, unknown_products: UnknownProducts = UNKNOWN_REJECT
) -> ServingModel:
    """The serving bundle of a model already parsed (in this process; for small models)."""
    model = loaded.model
    prepared = prepare(
        model.to_json(), loaded.metadata.to_json(), loaded.pointer.model_sha256
    )
    # Re-written, a version 1 model reads as version 2 without bounds: say what it was.
    version = 3 if model.bases or model.catalogue else 2 if model.bounds or model.ranges else 1
    prepared = prepared._replace(format_version=version)
    return serving_from(prepared, loaded.pointer, unknown_products)


def load_serving(
    store: Store,
    pointer: Pointer,
    unknown_products: UnknownProducts = UNKNOWN_REJECT,
    isolate: bool = True,
    background: bool = False,
) -> ServingModel:
    """Read, verify, parse and check the model a pointer names, ready to serve.

    With ``isolate`` the parsing runs in a child process, so this process's memory and
    interpreter stay free for requests (``background``: at low priority, for refreshes).
    ModelUnavailable says why a model is invalid,
    StoreError or LoadFailed why it could not be read this time.
    """
    model_bytes, metadata_bytes = read_verified(store, pointer)
    try:
        if isolate:
            prepared = prepare_isolated(
                model_bytes, metadata_bytes, pointer.model_sha256, background=background
            )
        else:
            prepared = prepare(model_bytes, metadata_bytes, pointer.model_sha256)
    except MetadataMismatch as exc:
        where = store.location(pointer.metadata_key)
        raise ModelUnavailable(f"{where} does not describe the artefact it sits beside: {exc}")
    except ModelFormatError as exc:
        where = store.location(pointer.model_key)
        raise ModelUnavailable(f"{where} is unreadable: {exc}") from exc
    except OSError as exc:  # ChildProcessError included
        raise LoadFailed(f"the process parsing the model failed: {exc!r}") from exc
    del model_bytes, metadata_bytes
    return serving_from(prepared, pointer, unknown_products)


def load_latest_serving(
    store: Store, unknown_products: UnknownProducts = UNKNOWN_REJECT, isolate: bool = True,
) -> ServingModel:
    """The current published model, ready to serve; ModelUnavailable says why there is none."""
    try:
        found = read_pointer(store)
        if found is None:
            raise ModelUnavailable("no model is published: the store has no models/latest.json")
        return load_serving(store, found[0], unknown_products, isolate)
    except (StoreError, LoadFailed) as exc:
        raise ModelUnavailable(str(exc)) from exc


def refresh_step(
    store: Store,
    current: ServingModel,
    rejected: Optional[Pointer] = None,
    isolate: bool = False,
) -> RefreshOutcome:
    """Check the store's pointer once; load and verify a new model if it moved.

    Outcomes: ``unchanged`` (same model or a pointer already rejected), ``absent``
    (nothing published), ``swapped`` (serve the returned model), ``rejected`` (the
    new model is invalid: logged, remembered in ``rejected`` and not retried) and
    ``failed`` (the store could not be read, or the loading process died: logged,
    retried next time). In every case but ``swapped`` the current model is returned
    and keeps serving. ``isolate`` parses the new model in a child process.
    """
    try:
        found = read_pointer(store)
    except ModelUnavailable as exc:
        return _kept(current, "rejected", f"new model rejected: {exc}", rejected)
    except StoreError as exc:
        return _kept(current, "failed", f"model refresh failed: {exc}", rejected)
    if found is None:
        return RefreshOutcome(current, "absent", "no model is published", rejected)
    pointer = found[0]
    if pointer == current.pointer or pointer == rejected:
        still = None if pointer == current.pointer else rejected
        return RefreshOutcome(current, "unchanged", pointer.model_version, still)
    try:
        fresh = load_serving(
            store, pointer, current.unknown_products, isolate, background=isolate,
        )
    except (StoreError, LoadFailed) as exc:
        return _kept(current, "failed", f"model refresh failed: {exc}", rejected)
    except Exception as exc:  # noqa: BLE001 - any defect in a new model must leave the old one
        return _kept(current, "rejected", f"new model rejected: {exc}", pointer)
    log.info("model refreshed: now serving %s (was %s)", fresh.version, current.version)
    return RefreshOutcome(fresh, "swapped", f"now serving {fresh.version}", None)


def _kept(
    current: ServingModel, outcome: str, message: str, rejected: Optional[Pointer]
) -> RefreshOutcome:
    message = f"{message} (still serving {current.version})"
    if outcome == "failed":
        log.warning("%s", message)
    else:
        log.error("%s", message)
    return RefreshOutcome(current, outcome, message, rejected)
