"""The serving policy, written once: which routes need the API key or a JSON body, and the checks.

The ASGI layer in front of FastAPI (:mod:`pipeline.api.fastpath`) applies it to every
request for a guarded route, before the route sees it, whichever way the route is then
answered. In order: the key (401), the body's Content-Type (415), its size (413).

The key guards what reveals the model or the catalogue: the predictions, the model's facts
(store location, git commit, options, library versions) and its list of codes. Health,
metrics and the docs stay open: probes and Prometheus carry no key, and the docs describe
only the API, the same whatever model is served.
"""
from __future__ import annotations

from hmac import compare_digest
from typing import Dict, FrozenSet, NamedTuple, Optional, Tuple

from pipeline.api.errors import message_body
from pipeline.api.routes import BATCH_PATH, MODEL_PATH, PRODUCT_CODES_PATH, SINGLE_PATH
from pipeline.api.settings import ServeSettings

Route = Tuple[str, str]
KEYED_ROUTES: FrozenSet[Route] = frozenset({
    ("POST", SINGLE_PATH), ("POST", BATCH_PATH), ("GET", MODEL_PATH), ("GET", PRODUCT_CODES_PATH),
})
JSON_BODY_ROUTES: FrozenSet[Route] = frozenset({("POST", SINGLE_PATH), ("POST", BATCH_PATH)})
UNAUTHORIZED_MESSAGE = "missing or invalid API key"
MAX_SHOWN_CONTENT_TYPE = 100


class Guard(NamedTuple):
    """What the policy asks of one route's requests."""

    keyed: bool
    json_body: bool


GUARDS: Dict[Route, Guard] = {
    route: Guard(route in KEYED_ROUTES, route in JSON_BODY_ROUTES)
    for route in sorted(KEYED_ROUTES | JSON_BODY_ROUTES)
}


class Refusal(NamedTuple):
    """A request refused before its route: the status and body; ``close`` when its body is
    left unread, so the connection cannot carry another request."""

    status: int
    body: bytes
    close: bool


UNAUTHORIZED = Refusal(401, message_body(UNAUTHORIZED_MESSAGE), False)


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
    cut = MAX_SHOWN_CONTENT_TYPE
    shown = value if len(value) <= cut else value[:cut] + "..."
    return (
        f"unsupported Content-Type {shown!r}: send the body as JSON with "
        "Content-Type: application/json"
    )


class Policy:
    """The checks for one service's settings: its key, its header and its body limit."""

    def __init__(self, settings: ServeSettings) -> None:
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self.key: Optional[bytes] = key.encode() if key else None
        self.key_header = settings.api_key_header.lower().encode("latin-1")
        self.max_body_bytes = settings.max_body_bytes
        self.too_large = Refusal(
            413, message_body(f"request body exceeds {settings.max_body_bytes} bytes"), True
        )

    def refusal(
        self, guard: Guard, key: Optional[bytes], content_type: Optional[bytes], length: int
    ) -> Optional[Refusal]:
        """Why a request for a guarded route is refused from its headers alone, or None.

        ``length`` is the declared Content-Length (0 if none); a body that turns out
        longer than the limit while it is read gets :attr:`too_large` too.
        """
        if guard.keyed and self.key is not None and (
            key is None or not compare_digest(key, self.key)
        ):
            return UNAUTHORIZED
        if guard.json_body:
            if content_type is not None and not is_json_content_type(content_type):
                detail = unsupported_media_type(content_type.decode("latin-1"))
                return Refusal(415, message_body(detail), True)
            if length > self.max_body_bytes:
                return self.too_large
        return None
