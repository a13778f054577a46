"""The served model: an immutable bundle of everything the hot path needs, and its refresh.

A :class:`ServingModel` is built once per loaded model (validators, code index,
response fragments) and swapped in with one reference assignment, so a request
that picked one up keeps a consistent view while a newer one replaces it.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import numpy.typing as npt
import orjson
from pydantic_core import InitErrorDetails, ValidationError

from pipeline.api.schemas import ORDERS_PLACED_MAX, RequestValidators, build_validators
from pipeline.artefacts import LoadedModel, ModelUnavailable, Pointer, load_pointed, read_pointer
from pipeline.store import Store, StoreError

log = logging.getLogger("pipeline.api")

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
TRAINED_AT_KEYS = ("created_at", "trained_at")


class BatchRows(NamedTuple):
    """A validated batch as columns."""

    product_codes: List[str]
    orders_placed: FloatArray


def parse_time(value: Any) -> Optional[datetime]:
    """An aware datetime from an ISO 8601 string (naive means UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def jsonable(value: Any) -> Any:
    """A copy of parsed JSON that strict JSON can carry (no NaN, no ints beyond 64 bits)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)
    return value


@dataclass(frozen=True)
class ServingModel:
    """One loaded model with its validators and precomputed per-model state."""

    loaded: LoadedModel
    version: str
    metadata: Dict[str, Any]
    product_codes: Tuple[str, ...]
    validators: RequestValidators
    predictors: Dict[str, Callable[[float], float]]
    uppers: Dict[str, Callable[[float], float]]
    ranges: Dict[str, Tuple[float, float]]
    validate_single: Callable[[bytes], Dict[str, Any]]
    max_batch_rows: int
    trained_at: Optional[datetime]
    published_at: Optional[datetime]
    loaded_at: float

    def predict_one(self, product_code: str, orders_placed: float) -> float:
        """The estimate for one validated row (pure Python)."""
        return self.predictors[product_code](orders_placed)

    def parse_single(self, body: bytes) -> Tuple[str, float]:
        """Validate a single-request body; ValidationError exactly as the validator raises it.

        A well-formed body is accepted after orjson and a few checks that are no more
        lenient than the schema; anything else is validated by pydantic-core, which
        reports the errors.
        """
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if type(data) is dict:
            code: Any = data.get("product_code")
            orders: Any = data.get("orders_placed")
            kind = type(orders)
            if (
                (kind is int or kind is float)
                and type(code) is str
                and code in self.predictors
                and 0 <= orders <= ORDERS_PLACED_MAX
            ):
                return code, float(orders)
        row = self.validate_single(body)
        return row["product_code"], row["orders_placed"]

    def parse_batch(self, body: bytes) -> BatchRows:
        """Validate a batch body; ValidationError exactly as the batch validator raises it.

        The common case (a JSON array of well-formed rows) is checked column-wise after
        orjson parses it; anything unusual is left to pydantic-core, which then reports
        every error just as the declared schema does. A list over the row cap is refused
        at once, without validating its rows.
        """
        rows = self._fast_columns(body)
        if rows is not None:
            return rows
        checked = self.validators.batch.validate_json(body)
        return BatchRows(
            [row["product_code"] for row in checked],
            np.array([row["orders_placed"] for row in checked], dtype=np.float64),
        )

    def _fast_columns(self, body: bytes) -> Optional[BatchRows]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(data) is not list:
            return None
        if len(data) > self.max_batch_rows:
            too_long = _too_long(data, self.max_batch_rows)
            raise ValidationError.from_exception_data("list", [too_long])
        try:
            codes = [row["product_code"] for row in data]
            orders = [row["orders_placed"] for row in data]
            if not self.predictors.keys() >= set(codes):
                return None
        except (TypeError, KeyError):
            return None
        if not {type(value) for value in orders} <= {int, float}:
            return None
        values = np.array(orders, dtype=np.float64)
        if len(values) and not (values.min() >= 0.0 and values.max() <= ORDERS_PLACED_MAX):
            return None
        return BatchRows(codes, values)

    def predict_batch(self, rows: BatchRows) -> FloatArray:
        """Estimates for validated rows, vectorised per product code (same as predict_one)."""
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are checked
            return self.loaded.model.predict(rows.product_codes, rows.orders_placed)

    def predict_batch_bounded(
        self, rows: BatchRows
    ) -> Tuple[FloatArray, Optional[FloatArray], Optional[BoolArray]]:
        """Estimates, p90 bounds and extrapolated flags for validated rows (None: not known)."""
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are checked
            return self.loaded.model.predict_bounded(rows.product_codes, rows.orders_placed)


def _too_long(data: List[Any], cap: int) -> InitErrorDetails:
    ctx = {"field_type": "List", "max_length": cap, "actual_length": len(data)}
    return {"type": "too_long", "loc": (), "input": data, "ctx": ctx}


def build_serving_model(loaded: LoadedModel, max_batch_rows: int) -> ServingModel:
    """Precompute what serving a loaded model needs."""
    codes = loaded.model.product_codes
    metadata = loaded.metadata
    validators = build_validators(codes, max_batch_rows)
    trained = next(
        (parse_time(metadata.get(key)) for key in TRAINED_AT_KEYS if metadata.get(key)), None
    )
    return ServingModel(
        loaded=loaded,
        version=loaded.version,
        metadata=jsonable(metadata),
        product_codes=codes,
        validators=validators,
        predictors={code: loaded.model.curves[code].predict_one for code in codes},
        uppers={code: bound.predict_one for code, bound in loaded.model.bounds.items()},
        ranges=dict(loaded.model.ranges),
        validate_single=validators.single.validator.validate_json,
        max_batch_rows=max_batch_rows,
        trained_at=trained,
        published_at=parse_time(loaded.pointer.published_at),
        loaded_at=time.time(),
    )


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


def refresh_step(
    store: Store, current: ServingModel, rejected: Optional[Pointer] = None
) -> RefreshOutcome:
    """Check the store's pointer once; load and verify a new model if it moved.

    Outcomes: ``unchanged`` (same model or a pointer already rejected), ``absent``
    (nothing published), ``swapped`` (serve the returned model), ``rejected`` (the
    new model is invalid: logged, remembered in ``rejected`` and not retried) and
    ``failed`` (the store could not be read: logged, retried next time). In every
    case but ``swapped`` the current model is returned and keeps serving.
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
    if pointer == current.loaded.pointer or pointer == rejected:
        still = None if pointer == current.loaded.pointer else rejected
        return RefreshOutcome(current, "unchanged", pointer.model_version, still)
    try:
        fresh = build_serving_model(load_pointed(store, pointer), current.max_batch_rows)
    except StoreError as exc:
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
