"""Error bodies in FastAPI's shape, safe to serialise whatever the client sent."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import orjson

MAX_ECHO_CHARS = 100
MAX_ECHO_ITEMS = 16
MAX_ECHO_DEPTH = 2
MAX_LOGGED_ERRORS = 3
MAX_LISTED_ERRORS = 100
INT64_LIMIT = 2**63

Loc = Tuple[Union[str, int], ...]


def _clip(text: str) -> str:
    if len(text) > MAX_ECHO_CHARS:
        text = text[:MAX_ECHO_CHARS] + "..."
    # Lone surrogates (possible from stdlib JSON) cannot be encoded as UTF-8.
    return text.encode("utf-8", "replace").decode("utf-8")


def echo(value: Any, depth: int = 0) -> Any:
    """A small, serialisable copy of a client's input for an error message."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if -INT64_LIMIT <= value < INT64_LIMIT else _clip(str(value))
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, (bytes, bytearray)):
        return {}
    if isinstance(value, Mapping):
        if depth >= MAX_ECHO_DEPTH or len(value) > MAX_ECHO_ITEMS:
            return f"<object with {len(value)} keys>"
        return {_clip(str(k)): echo(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if depth >= MAX_ECHO_DEPTH or len(value) > MAX_ECHO_ITEMS:
            return f"<array of {len(value)} items>"
        return [echo(v, depth + 1) for v in value]
    return _clip(repr(value))


def issue(error: Mapping[str, Any], prefix: Loc = ("body",)) -> Dict[str, Any]:
    """One pydantic error as a ValidationIssue, with its location under ``prefix``."""
    loc = prefix + tuple(error.get("loc", ()))
    kind = error.get("type")
    item: Dict[str, Any] = {
        "type": str(error.get("type", "value_error")),
        "loc": [part if isinstance(part, int) else _clip(str(part)) for part in loc],
        # literal_error's message lists the valid product codes (at most 20): never shorten it.
        "msg": str(error.get("msg")) if kind == "literal_error" else _clip(str(error.get("msg"))),
        "input": {} if kind == "json_invalid" else echo(error.get("input")),
    }
    ctx = error.get("ctx")
    if ctx:
        item["ctx"] = {str(k): _context(v) for k, v in ctx.items()}
    return item


def _context(value: Any) -> Any:
    """An error context value as JSON: numbers kept, lists of text kept (clipped), else text."""
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, list):
        return [_clip(str(v)) for v in value[:MAX_ECHO_ITEMS]]
    return str(value)


def validation_body(errors: Sequence[Mapping[str, Any]], prefix: Loc = ("body",)) -> bytes:
    """The 422 body ``{"detail": [...]}``: the first 100 errors, and ``more_errors`` if any."""
    detail = [issue(error, prefix) for error in errors[:MAX_LISTED_ERRORS]]
    body: Dict[str, Any] = {"detail": detail}
    if len(errors) > MAX_LISTED_ERRORS:
        body["more_errors"] = len(errors) - MAX_LISTED_ERRORS
    try:
        return orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        for item in detail:
            item["input"] = None
            item.pop("ctx", None)
        return orjson.dumps(body)


def message_body(message: str) -> bytes:
    """A ``{"detail": "..."}`` body."""
    return orjson.dumps({"detail": message})


def summary(errors: Iterable[Mapping[str, Any]], prefix: Loc = ("body",)) -> List[Dict[str, Any]]:
    """The first few errors as type and location only, for the request log."""
    out: List[Dict[str, Any]] = []
    for error in errors:
        if len(out) == MAX_LOGGED_ERRORS:
            break
        loc = prefix + tuple(error.get("loc", ()))
        parts = [part if isinstance(part, int) else _clip(str(part)) for part in loc]
        out.append({"type": str(error.get("type")), "loc": parts})
    return out
