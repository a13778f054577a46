"""The serve_model stage: load and verify the published model, then serve it with uvicorn.

The port opens only once a verified model is in memory, because Bodywork's probes
are TCP. The model is parsed and checked in a child process and served from flat
arrays, so a catalogue of 100,000 parts starts in seconds and stays small. On SIGTERM
(a rolling update, with no preStop hook) the server keeps accepting and answering for a
drain window, then stops accepting, answers every request it has received and exits 0
well inside Kubernetes' grace period.

Run as ``python -m pipeline.serve_model STORE`` or, as Bodywork does, as
``python serve_model.py STORE`` from ``pipeline/`` with the repo root on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Optional, Sequence, Tuple, TypeVar

import uvicorn
from pydantic import ValidationError

from pipeline.api.serving import ServingModel, load_latest_serving
from pipeline.api.settings import UNKNOWN_PRODUCTS, ServeSettings
from pipeline.artefacts import ModelUnavailable
from pipeline.store import Store, StoreError, open_store

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8000
STOP_DEADLINE_SECONDS = 10.0
MAX_DRAIN_SECONDS = 6.0
EXIT_MARGIN_SECONDS = 2.0
LINGER_SECONDS = 0.5
ACCEPT_SWEEP_SECONDS = 0.005
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
CLOSE_HEADER = (b"connection", b"close")
OWN_LOGGERS = ("pipeline", "uvicorn")

log = logging.getLogger("pipeline.serve_model")
T = TypeVar("T")


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


SETTINGS_FROM_FLAGS = (
    "model_refresh_seconds", "drain_seconds", "max_batch_rows", "root_path", "unknown_products"
)


def _help(text: str, setting: str) -> str:
    default = ServeSettings.model_fields[setting].default
    return f"{text} (default: TTD_{setting.upper()} or {default!r})"


def _number(text: str, kind: Callable[[str], T], what: str) -> T:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}, not {text!r}") from None


def _port(text: str) -> int:
    value = _number(text, int, "must be a port number in 0..65535")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, not {value}")
    return value


def _non_negative_seconds(text: str) -> float:
    value = _number(text, float, "must be a number of seconds >= 0")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}")
    return value


def _drain_seconds(text: str) -> float:
    value = _non_negative_seconds(text)
    if value > MAX_DRAIN_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_DRAIN_SECONDS:g} s to exit within "
            f"{STOP_DEADLINE_SECONDS:g} s of SIGTERM, not {value:g}"
        )
    return value


def _positive_int(text: str) -> int:
    value = _number(text, int, "must be a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line: the store URL and the server's tunables."""
    parser = argparse.ArgumentParser(
        prog="serve_model",
        description="Serve the latest published time-to-dispatch model over HTTP. "
        "The API key, if any, comes from the environment (TTD_API_KEY).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("store", help="a local path, file://path or s3://bucket[/prefix]")
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to listen on")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="TCP port to listen on")
    parser.add_argument(
        "--model-refresh-seconds",
        type=_non_negative_seconds,
        default=argparse.SUPPRESS,
        help=_help("poll the store for a newly published model this often (0: never)",
                   "model_refresh_seconds"),
    )
    parser.add_argument(
        "--drain-seconds",
        type=_drain_seconds,
        default=argparse.SUPPRESS,
        help=_help("after SIGTERM, keep accepting and answering this long before stopping",
                   "drain_seconds"),
    )
    parser.add_argument(
        "--max-batch-rows",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help=_help("most rows accepted in one batch request", "max_batch_rows"),
    )
    parser.add_argument(
        "--root-path",
        default=argparse.SUPPRESS,
        help=_help("path prefix a proxy strips before requests reach the service (the "
                   "ingress's /<namespace>/<service>), so that /docs finds the schema",
                   "root_path"),
    )
    parser.add_argument(
        "--unknown-products",
        choices=UNKNOWN_PRODUCTS,
        default=argparse.SUPPRESS,
        help=_help("a part the model does not know: 'reject' answers 422 (in a batch: nulls, "
                   "the row listed in unknown_product_codes); 'catalogue' answers it from the "
                   "model's catalogue-wide curve with basis 'catalogue' (a model without one "
                   "keeps rejecting)", "unknown_products"),
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="log threshold")
    return parser


def parse_options(argv: Optional[Sequence[str]]) -> ServeOptions:
    """Options from the command line; secrets are left to ServeSettings' environment."""
    args = build_parser().parse_args(argv)
    try:
        given = {name: getattr(args, name, None) for name in SETTINGS_FROM_FLAGS}
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise StartupError(f"invalid settings: {_one_line(str(exc))}") from exc
    return ServeOptions(
        store_url=args.store,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        settings=settings,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load_model(store_url: str, settings: ServeSettings) -> Tuple[Store, ServingModel]:
    """Open the store and load the verified latest model; StartupError says why not."""
    try:
        store = open_store(store_url)
        return store, load_latest_serving(store, settings.unknown_products)
    except (ModelUnavailable, StoreError) as exc:
        reason = _one_line(str(exc))
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


def configure_logging(level: str) -> None:
    """One line per record on stderr: ours and uvicorn's at ``level``, libraries' warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, load and verify the model, then serve; 0 after a drained stop, 1 on refusal."""
    configure_logging("info")
    try:
        options = parse_options(argv)
        configure_logging(options.log_level)
        with ThreadPoolExecutor(max_workers=1) as pool:
            loading = pool.submit(load_model, options.store_url, options.settings)
            # While a child process parses the model, import the web framework.
            import pipeline.api.app  # noqa: F401
            store, loaded = loading.result()
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    log.info(
        "serving model %s from %s: %d product codes, unknown products: %s",
        loaded.version, store.location(loaded.pointer.model_key), len(loaded.lookup),
        "answered from the catalogue curve" if loaded.answers_unknown else "rejected",
    )
    return serve(options, store, loaded)


if __name__ == "__main__":
    sys.exit(main())
