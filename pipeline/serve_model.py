"""The serve_model stage (Bodywork's entry file): command line, logging and ``main()``.

Run as ``python -m pipeline.serve_model STORE`` or, as Bodywork does, as
``python serve_model.py STORE`` from ``pipeline/`` with the repo root on PYTHONPATH.
The service itself is pipeline/api/: its runtime (load before listen, the drain on
SIGTERM) is pipeline/api/server.py.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Callable, Optional, Sequence, TypeVar

from pydantic import ValidationError

from pipeline import log_level
from pipeline.api.server import (
    MAX_DRAIN_SECONDS,
    STOP_DEADLINE_SECONDS,
    ServeOptions,
    StartupError,
    one_line,
    run,
)
from pipeline.api.settings import UNKNOWN_PRODUCTS, ServeSettings

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8000
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
OWN_LOGGERS = ("pipeline", "uvicorn")

log = logging.getLogger("pipeline.serve_model")
T = TypeVar("T")


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
    parser.add_argument("--log-level", choices=LOG_LEVELS, type=log_level(LOG_LEVELS),
                        default="info", help="log threshold (either case)")
    return parser


def parse_options(argv: Optional[Sequence[str]]) -> ServeOptions:
    """Options from the command line; secrets are left to ServeSettings' environment."""
    args = build_parser().parse_args(argv)
    try:
        given = {name: getattr(args, name, None) for name in SETTINGS_FROM_FLAGS}
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise StartupError(f"invalid settings: {one_line(str(exc))}") from exc
    return ServeOptions(
        store_url=args.store,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        settings=settings,
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, load and verify the model, then serve; 0 after a drained stop, 1 on refusal."""
    configure_logging("info")
    try:
        options = parse_options(argv)
        configure_logging(options.log_level)
        return run(options)
    except StartupError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
