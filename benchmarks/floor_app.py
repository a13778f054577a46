"""The speed floor for bench_serve.py: a bare ASGI app that reads and parses a JSON body."""
from typing import Any, Awaitable, Callable, Dict

import orjson

RESPONSE = b'{"est_hours_to_dispatch":1.0,"model_version":"floor"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(RESPONSE)).encode())]

Message = Dict[str, Any]


async def app(
    scope: Dict[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Read the whole body, parse it as JSON, answer a constant."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    orjson.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": RESPONSE})
