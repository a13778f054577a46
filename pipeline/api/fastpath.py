"""The lean ASGI layer in front of FastAPI: the two prediction routes, logging and metrics.

``POST /api/v0.1/time_to_dispatch`` and ``.../batch`` are answered here without
FastAPI's routing, dependency and middleware machinery, validating with the same
pydantic schemas (pydantic-core, from the raw body) and answering errors in the
same shape. Every other request falls through to FastAPI, which also declares the
prediction routes so ``/openapi.json`` describes them; a ``HEAD`` request is answered
as its ``GET`` without the body. Every request, whichever way it goes, gets a request
id echoed in ``X-Request-ID``, one JSON log line and its metrics.
"""
from __future__ import annotations

import itertools
import logging
import math
import secrets
import time
from hmac import compare_digest
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import numpy as np
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.errors import message_body, summary, validation_body
from pipeline.api.serving import RequestRejected, ServingModel
from pipeline.api.state import ServiceState
from pipeline.model_format import CATALOGUE_BASIS

SINGLE_PATH = "/api/v0.1/time_to_dispatch"
BATCH_PATH = "/api/v0.1/time_to_dispatch/batch"
REQUEST_ID_HEADER = b"x-request-id"
CONTENT_TYPE_HEADER = b"content-type"
MAX_REQUEST_ID_LENGTH = 128
LOG_SCOPE_KEY = "ttd.log"
OTHER_ENDPOINT = "other"
CLIENT_CLOSED = 499
JSON_TYPE = (b"content-type", b"application/json")
CLOSE = (b"connection", b"close")
UNAUTHORIZED = message_body("missing or invalid API key")
INTERNAL_ERROR = message_body("internal error; the request id is in the X-Request-ID header")
NOT_FINITE_MSG = "The model gives no finite estimate for this orders_placed"

Outcome = Tuple[int, bytes, Dict[str, Any], int]

log = logging.getLogger("pipeline.api")


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


def is_json_content_type(value: bytes) -> bool:
    """Whether a Content-Type header declares JSON: application/json or application/*+json.

    An empty value counts as no Content-Type, which is accepted too.
    """
    media = value.split(b";", 1)[0].strip().lower()
    return (
        not media
        or media == b"application/json"
        or (media.startswith(b"application/") and media.endswith(b"+json"))
    )


def unsupported_media_type(value: str) -> str:
    """The 415 message for a body declared with a non-JSON Content-Type."""
    shown = value if len(value) <= 100 else value[:100] + "..."
    return (
        f"unsupported Content-Type {shown!r}: send the body as JSON with "
        "Content-Type: application/json"
    )


def _not_finite(loc: List[Any], value: float) -> bytes:
    issue = {"type": "value_error", "loc": loc, "msg": NOT_FINITE_MSG, "input": value}
    return orjson.dumps({"detail": [issue]})


def _rejected(exc: RequestRejected) -> Outcome:
    return 422, validation_body(exc.errors), {"errors": summary(exc.errors)}, 0


def answer_single(serving: ServingModel, body: bytes) -> Outcome:
    """Validate and answer one prediction request body: status, payload, log fields, rows."""
    try:
        code, orders = serving.parse_single(body)
    except RequestRejected as exc:
        return _rejected(exc)
    lookup = serving.lookup
    fields: Dict[str, Any] = {"input": {"product_code": code, "orders_placed": orders}}
    i = lookup.index.get(code)
    p90: Optional[float]
    if i is not None:
        estimate = lookup.estimate(i, orders)
        p90 = lookup.upper(i, orders, estimate)
        extrapolated, basis = lookup.extrapolated(i, orders), lookup.basis(i)
    elif serving.answers_unknown:
        estimate, p90 = lookup.catalogue_answer(orders)
        extrapolated, basis = None, CATALOGUE_BASIS
    else:
        return _rejected(RequestRejected([serving.unknown_issue(code, ("product_code",))]))
    if not math.isfinite(estimate) or (p90 is not None and not math.isfinite(p90)):
        loc: List[Any] = ["body", "orders_placed"]
        fields["errors"] = [{"type": "value_error", "loc": loc}]
        return 422, _not_finite(loc, orders), fields, 0
    fields["prediction"] = estimate
    payload = orjson.dumps({
        "est_hours_to_dispatch": estimate,
        "p90_hours_to_dispatch": p90,
        "extrapolated": extrapolated,
        "basis": basis,
        "model_version": serving.version,
    })
    return 200, payload, fields, 1


def _column(values: Optional[Any], present: Any, n: int) -> Any:
    """An answer array: numpy values where ``present``, null elsewhere (all null if None)."""
    if values is None:
        return [None] * n
    if present.all():
        return values
    listed = values.tolist()
    for row in np.flatnonzero(~present).tolist():
        listed[row] = None
    return listed


def answer_batch(serving: ServingModel, body: bytes) -> Outcome:
    """Validate and answer one batch request body: status, payload, log fields, rows."""
    try:
        rows = serving.parse_batch(body)
    except RequestRejected as exc:
        return _rejected(exc)
    answer = serving.predict_batch(rows)
    estimates, uppers, answered = answer.estimates, answer.uppers, answer.answered
    n = len(estimates)
    fields: Dict[str, Any] = {"input": {"rows": n, "product_codes": len(set(rows.product_codes))}}
    if len(answer.unknown):
        fields["unknown_product_codes"] = len(answer.unknown)
    with np.errstate(invalid="ignore"):
        broken = answered & ~np.isfinite(estimates)
        if uppers is not None:
            broken |= answer.bounded & ~np.isfinite(uppers)
    if broken.any():
        bad = int(np.flatnonzero(broken)[0])
        loc: List[Any] = ["body", bad, "orders_placed"]
        fields["errors"] = [{"type": "value_error", "loc": loc}]
        return 422, _not_finite(loc, float(rows.orders_placed[bad])), fields, 0
    done = estimates[answered]
    if len(done):
        fields["prediction"] = {
            "min": float(done.min()),
            "mean": float(done.mean()),
            "max": float(done.max()),
        }
    unknown = answer.unknown.tolist()
    codes = rows.product_codes
    payload = orjson.dumps(
        {
            "est_hours_to_dispatch": _column(estimates, answered, n),
            "p90_hours_to_dispatch": _column(uppers, answer.bounded, n),
            "extrapolated": _column(answer.outside, answer.ranged, n),
            "basis": answer.bases,
            "unknown_product_codes": [{"index": i, "product_code": codes[i]} for i in unknown],
            "model_version": serving.version,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return 200, payload, fields, int(answered.sum())


class PredictionLayer:
    """An ASGI app: prediction routes served directly, everything else by FastAPI."""

    def __init__(self, app: ASGIApp, state: ServiceState, known_paths: FrozenSet[str]) -> None:
        self.app = app
        self.state = state
        self.known_paths = known_paths
        settings = state.settings
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self._key: Optional[bytes] = key.encode() if key else None
        self._key_header = settings.api_key_header.lower().encode("latin-1")
        self._limit = settings.max_body_bytes
        self._too_large = message_body(f"request body exceeds {settings.max_body_bytes} bytes")
        self._routes: Dict[Tuple[str, str], Callable[[ServingModel, bytes], Outcome]] = {}
        if settings.fast_path:
            self._routes = {
                ("POST", SINGLE_PATH): answer_single,
                ("POST", BATCH_PATH): answer_batch,
            }
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection scope."""
        if scope["type"] == "http":
            route = self._routes.get((scope["method"], scope["path"]))
            if route is not None:
                await self._predict(scope, receive, send, route)
            else:
                await self._fall_through(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def request_id(self, raw: Optional[bytes]) -> str:
        """The client's X-Request-ID if it is short printable ASCII, else a new unique id."""
        if raw is not None and 0 < len(raw) <= MAX_REQUEST_ID_LENGTH and raw.isascii():
            text = raw.decode("ascii")
            if text.isprintable():
                return text
        return f"{self._id_prefix}-{next(self._ids):x}"

    async def _predict(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        compute: Callable[[ServingModel, bytes], Outcome],
    ) -> None:
        start = time.perf_counter()
        raw_id = key = content_type = None
        length = 0
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                raw_id = value
            elif name == self._key_header:
                key = value
            elif name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == CONTENT_TYPE_HEADER:
                content_type = value
        request_id = self.request_id(raw_id)
        serving = self.state.serving
        headers = [JSON_TYPE, (REQUEST_ID_HEADER, request_id.encode())]
        outcome: Outcome
        if self._key is not None and (key is None or not compare_digest(key, self._key)):
            outcome = (401, UNAUTHORIZED, {}, 0)
        elif content_type is not None and not is_json_content_type(content_type):
            detail = unsupported_media_type(content_type.decode("latin-1"))
            outcome = (415, message_body(detail), {}, 0)
            headers.append(CLOSE)  # the body is left unread
        else:
            try:
                if length > self._limit:
                    raise _BodyTooLarge
                message = await receive()
                if message["type"] != "http.request":
                    raise _ClientGone
                if message.get("more_body", False):
                    body = await self._read_body(receive, message)
                else:
                    body = message.get("body", b"")
                    if len(body) > self._limit:
                        raise _BodyTooLarge
            except _BodyTooLarge:
                outcome = (413, self._too_large, {}, 0)
                headers.append(CLOSE)
            except _ClientGone:
                self._record(scope, request_id, CLIENT_CLOSED, start, serving, {}, 0)
                return
            else:
                try:
                    outcome = compute(serving, body)
                except Exception:  # noqa: BLE001 - a defect still gets an id'd answer and log line
                    log.exception("request %s failed", request_id)
                    outcome = (500, INTERNAL_ERROR, {}, 0)
        status, payload, fields, rows = outcome
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self._record(scope, request_id, status, start, serving, fields, rows)

    async def _read_body(self, receive: Receive, first: Message) -> bytes:
        """The rest of a body that came in more than one message."""
        body: bytes = first.get("body", b"")
        chunks = [body]
        size = len(body)
        if size > self._limit:
            raise _BodyTooLarge
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _fall_through(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        raw_id = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), None)
        request_id = self.request_id(raw_id)
        serving = self.state.serving
        fields: Dict[str, Any] = {}
        head = scope["method"] == "HEAD"
        inner = dict(scope, method="GET") if head else scope
        inner[LOG_SCOPE_KEY] = fields
        status = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = dict(message, headers=headers)
            elif head and message["type"] == "http.response.body":
                message = dict(message, body=b"")
            await send(message)

        try:
            await self.app(inner, receive, send_with_id)
        finally:
            rows = int(fields.pop("rows", 0))
            self._record(scope, request_id, status[0], start, serving, fields, rows)

    def _record(
        self,
        scope: Scope,
        request_id: str,
        status: int,
        start: float,
        serving: ServingModel,
        fields: Dict[str, Any],
        rows: int,
    ) -> None:
        elapsed = time.perf_counter() - start
        path: str = scope["path"]
        endpoint = path if path in self.known_paths else OTHER_ENDPOINT
        metrics = self.state.metrics
        metrics.series(endpoint, status).observe(elapsed)
        if rows:
            metrics.count_predictions(endpoint, rows)
        log = self.state.request_log
        if log.enabled:
            log.write({
                "ts": log.timestamp(time.time()),
                "level": "info" if status < 400 else "warning" if status < 500 else "error",
                "event": "request",
                "request_id": request_id,
                "method": scope["method"],
                "path": path if endpoint != OTHER_ENDPOINT else path[:200],
                "status": status,
                "duration_ms": int(elapsed * 1e6) / 1000.0,
                "model_version": serving.version,
                **fields,
            })
