"""The service's runtime: load and verify the model, then run uvicorn until a drained stop.

The port opens only once a verified model is in memory, because Bodywork's probes
are TCP. The model is parsed and checked in a child process while this one imports the
web framework. On SIGTERM (a rolling update, with no preStop hook) the server keeps
accepting and answering for a drain window, then stops accepting, answers every request
it has received and exits 0 well inside Kubernetes' grace period. The stage's command
line is pipeline/serve_model.py.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any, Optional, Tuple

import uvicorn

from pipeline.api.serving import ServingModel, load_latest_serving
from pipeline.api.settings import ServeSettings
from pipeline.artefacts import ModelUnavailable
from pipeline.store import Store, StoreError, open_store

STOP_DEADLINE_SECONDS = 10.0
MAX_DRAIN_SECONDS = 6.0
EXIT_MARGIN_SECONDS = 2.0
LINGER_SECONDS = 0.5
ACCEPT_SWEEP_SECONDS = 0.005
CLOSE_HEADER = (b"connection", b"close")

# The stage's own lines (start, refusal, drain) are the serve_model stage's.
log = logging.getLogger("pipeline.serve_model")


class StartupError(Exception):
    """The service cannot start; the message is the one ERROR line an operator reads."""


@dataclass(frozen=True)
class ServeOptions:
    """What the command line asks for: where the model is, where to listen, how to stop."""

    store_url: str
    host: str
    port: int
    log_level: str
    settings: ServeSettings


def one_line(text: str) -> str:
    """A message's lines and runs of spaces joined into one line, for the log."""
    return " ".join(text.split())


def load_model(store_url: str, settings: ServeSettings) -> Tuple[Store, ServingModel]:
    """Open the store and load the verified latest model; StartupError says why not."""
    try:
        store = open_store(store_url)
        return store, load_latest_serving(store, settings.unknown_products)
    except (ModelUnavailable, StoreError) as exc:
        reason = one_line(str(exc))
        raise StartupError(f"no valid model to serve from {store_url}: {reason}") from exc


def stop_timeout_seconds(drain_seconds: float) -> int:
    """How long in-flight requests may run after the drain, so the process exits in time."""
    spare = STOP_DEADLINE_SECONDS - drain_seconds - LINGER_SECONDS - EXIT_MARGIN_SECONDS
    return max(1, int(spare))


class DrainingServer(uvicorn.Server):
    """A uvicorn server that, on SIGTERM or SIGINT, keeps serving for a drain window first.

    During the window new connections are still accepted and every response asks the
    client to close its connection, so clients reconnect (through the Service, to
    another pod once this one has left the endpoints). When the window ends the server
    accepts what the kernel has queued, stops listening, and lingers briefly so that
    connections accepted last can send their request. Then uvicorn's graceful shutdown
    runs: idle connections are closed and every request received is answered. A second
    signal ends the window at once; a third exits without waiting for requests.
    """

    def __init__(
        self, config: uvicorn.Config, drain_seconds: float, linger_seconds: float = LINGER_SECONDS
    ) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.linger_seconds = linger_seconds
        self.drain_deadline: Optional[float] = None
        self.listening = True

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        """Start the drain on the first signal; end it on the second; force on the third."""
        # The signal is not recorded for uvicorn to re-raise: a drained stop exits 0.
        name = signal.Signals(sig).name
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.drain_seconds
            self._close_connections_after_response()
            log.info("%s received: draining for %.1f s, then stopping", name, self.drain_seconds)
        elif not self.should_exit:
            log.info("%s received again: ending the drain now", name)
            self.should_exit = True
        else:
            log.warning("%s received again: exiting without waiting for requests", name)
            self.force_exit = True

    def _close_connections_after_response(self) -> None:
        headers = self.server_state.default_headers
        if CLOSE_HEADER not in headers:
            self.server_state.default_headers = headers + [CLOSE_HEADER]

    async def _stop_listening(self) -> None:
        # One pass through the loop's I/O poll accepts every connection the kernel queued;
        # closing the listening socket would reset them.
        await asyncio.sleep(ACCEPT_SWEEP_SECONDS)
        for listener in self.servers:
            listener.close()
        self.listening = False
        log.info("drain window over: no longer accepting connections")

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (which refreshes the default headers), then the drain clock."""
        if await super().on_tick(counter):
            return True
        if self.drain_deadline is None:
            return False
        self._close_connections_after_response()
        now = time.monotonic()
        if self.listening and now >= self.drain_deadline:
            await self._stop_listening()
        if now >= self.drain_deadline + self.linger_seconds:
            self.should_exit = True
        return self.should_exit


def server_config(app: Any, options: ServeOptions) -> uvicorn.Config:
    """One uvloop + httptools process, access log off (the app logs each request)."""
    return uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        workers=1,
        access_log=False,
        proxy_headers=False,
        log_config=None,
        log_level=options.log_level,
        server_header=False,
        timeout_graceful_shutdown=stop_timeout_seconds(options.settings.drain_seconds),
    )


def serve(options: ServeOptions, store: Store, loaded: ServingModel) -> int:
    """Run the server until it has drained and stopped; the process exit code."""
    from pipeline.api.app import create_app

    app = create_app(options.settings, store, loaded)
    server = DrainingServer(server_config(app, options), options.settings.drain_seconds)
    server.run()
    if not server.started:
        log.error("the server did not start (see the lines above)")
        return 1
    return 0


def run(options: ServeOptions) -> int:
    """Load and verify the model, then serve it; StartupError says why there is none."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        loading = pool.submit(load_model, options.store_url, options.settings)
        # While a child process parses the model, import the web framework.
        import pipeline.api.app  # noqa: F401
        store, loaded = loading.result()
    log.info(
        "serving model %s from %s: %d product codes, unknown products: %s",
        loaded.version, store.location(loaded.pointer.model_key), len(loaded.lookup),
        "answered from the catalogue curve" if loaded.answers_unknown else "rejected",
    )
    return serve(options, store, loaded)
