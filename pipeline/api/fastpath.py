"""The lean ASGI layer in front of FastAPI: the serving policy, the prediction routes, logs.

Every request for a guarded route (:mod:`pipeline.api.policy`: the predictions and the
model's routes) is checked here, once, before any route sees it: the API key, then for
a body the Content-Type and the size, the body read whole. ``POST
/api/v0.1/time_to_dispatch`` and ``.../batch`` are then answered here by
:class:`~pipeline.api.predictions.Predictions`, without FastAPI's routing, dependency and
middleware machinery (with the ``fast_path`` setting off, FastAPI routes them to the same
answer). Every other request falls through to FastAPI, which also declares the
prediction routes so ``/openapi.json`` describes them; a ``HEAD`` request is answered as
its ``GET`` without the body. Every request, whichever way it goes, gets a request id
echoed in ``X-Request-ID``, one JSON log line and its metrics.
"""
from __future__ import annotations

import itertools
import logging
import secrets
import time
from typing import Any, Callable, Dict, FrozenSet, NamedTuple, Optional, Tuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.errors import message_body
from pipeline.api.policy import GUARDS, Guard, Policy
from pipeline.api.predictions import Outcome, Predictions
from pipeline.api.routes import BATCH_PATH, SINGLE_PATH, route_path
from pipeline.api.serving import ServingModel
from pipeline.api.state import ServiceState

REQUEST_ID_HEADER = b"x-request-id"
CONTENT_TYPE_HEADER = b"content-type"
MAX_REQUEST_ID_LENGTH = 128
LOG_SCOPE_KEY = "ttd.log"
OTHER_ENDPOINT = "other"
CLIENT_CLOSED = 499
JSON_TYPE = (b"content-type", b"application/json")
CLOSE = (b"connection", b"close")
INTERNAL_ERROR = message_body("internal error; the request id is in the X-Request-ID header")

Answer = Callable[[ServingModel, bytes], Outcome]

log = logging.getLogger("pipeline.api")


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class Rule(NamedTuple):
    """How the layer treats one guarded route: the policy's guard, and the answer it gives
    itself (None: FastAPI answers once the policy has passed the request)."""

    guard: Guard
    answer: Optional[Answer]


def _replayed(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then whatever the client sends next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class PredictionLayer:
    """An ASGI app: the policy on guarded routes, predictions answered directly, the rest by
    FastAPI."""

    def __init__(
        self, app: ASGIApp, state: ServiceState, known_paths: FrozenSet[str],
        predictions: Predictions,
    ) -> None:
        self.app = app
        self.state = state
        self.known_paths = known_paths
        settings = state.settings
        self.policy = Policy(settings)
        answers: Dict[Tuple[str, str], Answer] = {
            ("POST", SINGLE_PATH): predictions.single,
            ("POST", BATCH_PATH): predictions.batch,
        }
        self._rules = {
            route: Rule(guard, answers.get(route) if settings.fast_path else None)
            for route, guard in GUARDS.items()
        }
        self._root_path = settings.root_path
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection scope."""
        if scope["type"] == "http":
            method: str = scope["method"]
            path: str = scope["path"]
            if self._root_path:
                path = route_path(path, self._root_path)
            rule = self._rules.get(("GET" if method == "HEAD" else method, path))
            if rule is not None:
                await self._guarded(scope, receive, send, rule)
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

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, rule: Rule) -> None:
        start = time.perf_counter()
        raw_id = key = content_type = None
        length = 0
        key_header = self.policy.key_header
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                raw_id = value
            elif name == key_header:
                key = value
            elif name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == CONTENT_TYPE_HEADER:
                content_type = value
        request_id = self.request_id(raw_id)
        serving = self.state.serving
        refusal = self.policy.refusal(rule.guard, key, content_type, length)
        body = b""
        if refusal is None and rule.guard.json_body:
            try:
                message = await receive()
                if message["type"] != "http.request":
                    raise _ClientGone
                if message.get("more_body", False):
                    body = await self._read_body(receive, message)
                else:
                    body = message.get("body", b"")
                    if len(body) > self.policy.max_body_bytes:
                        raise _BodyTooLarge
            except _BodyTooLarge:
                refusal = self.policy.too_large
            except _ClientGone:
                self._record(scope, request_id, CLIENT_CLOSED, start, serving, {}, 0, 0)
                return
        headers = [JSON_TYPE, (REQUEST_ID_HEADER, request_id.encode())]
        if refusal is not None:
            status, payload = refusal.status, refusal.body
            if refusal.close:
                headers.append(CLOSE)
            fields: Dict[str, Any] = {}
            rows = unknown = 0
        elif rule.answer is None:
            given = _replayed(body, receive) if rule.guard.json_body else receive
            await self._fall_through(scope, given, send, request_id, start)
            return
        else:
            try:
                status, payload, fields, rows, unknown = rule.answer(serving, body)
            except Exception:  # noqa: BLE001 - a defect still gets an id'd answer and log line
                log.exception("request %s failed", request_id)
                status, payload, fields, rows, unknown = 500, INTERNAL_ERROR, {}, 0, 0
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        # A HEAD request (a guarded GET route's) gets the headers only.
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else payload})
        self._record(scope, request_id, status, start, serving, fields, rows, unknown)

    async def _read_body(self, receive: Receive, first: Message) -> bytes:
        """The rest of a body that came in more than one message, refused (_BodyTooLarge) as
        soon as it passes the limit."""
        limit = self.policy.max_body_bytes
        body: bytes = first.get("body", b"")
        if len(body) > limit:
            raise _BodyTooLarge
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _fall_through(
        self, scope: Scope, receive: Receive, send: Send, request_id: Optional[str] = None,
        start: Optional[float] = None,
    ) -> None:
        if start is None:
            start = time.perf_counter()
        if request_id is None:
            raw_id = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), None)
            request_id = self.request_id(raw_id)
        serving = self.state.serving
        fields: Dict[str, Any] = {}
        head = scope["method"] == "HEAD"
        inner = dict(scope, method="GET") if head else scope
        inner[LOG_SCOPE_KEY] = fields
        status = [500]
        given_id = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, given_id.encode()))
                message = dict(message, headers=headers)
            elif head and message["type"] == "http.response.body":
                message = dict(message, body=b"")
            await send(message)

        try:
            await self.app(inner, receive, send_with_id)
        finally:
            rows = int(fields.pop("rows", 0))
            unknown = int(fields.pop("unknown", 0))
            self._record(scope, request_id, status[0], start, serving, fields, rows, unknown)

    def _record(
        self,
        scope: Scope,
        request_id: str,
        status: int,
        start: float,
        serving: ServingModel,
        fields: Dict[str, Any],
        rows: int,
        unknown: int,
    ) -> None:
        elapsed = time.perf_counter() - start
        path: str = scope["path"]
        endpoint = path if path in self.known_paths else OTHER_ENDPOINT
        metrics = self.state.metrics
        metrics.series(endpoint, status).observe(elapsed)
        if rows:
            metrics.count_predictions(endpoint, rows)
        if unknown:
            metrics.count_unknown(unknown, serving.answers_unknown)
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
