"""The request log: one JSON line per request, written without blocking on each line.

Lines are serialised with orjson and buffered; the buffer is written with one
system call on the event loop's next turn, so a burst of requests costs one write.
Written from the event loop's thread only.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

import orjson

log = logging.getLogger("pipeline.api")

STDOUT = "-"
MAX_BUFFERED_BYTES = 256 * 1024
MILLISECONDS = tuple(f".{ms:03d}Z" for ms in range(1000))


class RequestLog:
    """Where request lines go: stdout (``-``), a file (a path), or nowhere (``""``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.enabled = target != ""
        self._fd: Optional[int] = None
        self._owns_fd = False
        self._buffer: List[bytes] = []
        self._size = 0
        self._scheduled = False
        self._second = -1
        self._stamp = ""
        self._failed = False

    def open(self) -> None:
        """Open the destination (a file is appended to)."""
        if not self.enabled or self._fd is not None:
            return
        if self.target == STDOUT:
            sys.stdout.flush()
            self._fd = sys.stdout.fileno()
        else:
            self._fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._owns_fd = True

    def timestamp(self, now: float) -> str:
        """An ISO 8601 UTC timestamp with milliseconds, formatting each second once."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp + MILLISECONDS[int((now - second) * 1000)]

    def write(self, record: Dict[str, Any]) -> None:
        """Queue one record as a JSON line; it is written on the loop's next turn."""
        if not self.enabled:
            return
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= MAX_BUFFERED_BYTES:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
                self._scheduled = True
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        """Write every queued line now."""
        self._scheduled = False
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        if self._fd is None:
            self.open()
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            if not self._failed:
                log.error("request log %s cannot be written: %s", self.target or "-", exc)
            self._failed = True

    def close(self) -> None:
        """Flush and close the destination (stdout stays open)."""
        self.flush()
        if self._owns_fd and self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._owns_fd = False
