"""Run a stage's CLI with a fault planted at the store seam (for tests and benchmarks only).

    python -m testing_support.stage_faults [--no-backoff] [--exit-on-write KEY] -- MODULE ARGS...

``--no-backoff`` keeps botocore's standard retry mode and budget but sleeps no backoff
(so a run that exhausts its retries ends in a second, not fifteen); it prints
``retry-backoff`` to stderr on each backoff taken. ``--exit-on-write PATTERN`` ends the
process with ``os._exit(EXIT_CRASHED)`` the moment the store is asked to write a key
matching the fnmatch PATTERN, before any byte of it is written: a crash at exactly
that point of a publish.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import runpy
import sys
from typing import Any, List, Optional

EXIT_CRASHED = 86


def _no_backoff() -> None:
    from botocore.retries import standard

    def delay_amount(self: Any, context: Any) -> float:
        print(f"retry-backoff attempt={context.attempt_number}", file=sys.stderr, flush=True)
        return 0.0

    standard.ExponentialBackoff.delay_amount = delay_amount  # type: ignore[method-assign]


def _exit_on_write(pattern: str) -> None:
    from pipeline import store

    def crash_if(target: str) -> None:
        if fnmatch.fnmatchcase(target, pattern):
            print(f"crashing before writing {target}", file=sys.stderr, flush=True)
            os._exit(EXIT_CRASHED)

    for cls in (store.LocalStore, store.S3Store):
        write_bytes, write_if_unchanged = cls.write_bytes, cls.write_if_unchanged
        create_bytes = cls.create_bytes

        def wb(self: Any, k: str, data: bytes, _orig: Any = write_bytes) -> None:
            crash_if(k)
            _orig(self, k, data)

        def cb(self: Any, k: str, data: bytes, _orig: Any = create_bytes) -> None:
            crash_if(k)
            _orig(self, k, data)

        def wiu(self: Any, k: str, data: bytes, token: Optional[str],
                _orig: Any = write_if_unchanged) -> None:
            crash_if(k)
            _orig(self, k, data, token)

        cls.write_bytes = wb  # type: ignore[method-assign]
        cls.create_bytes = cb  # type: ignore[method-assign]
        cls.write_if_unchanged = wiu  # type: ignore[method-assign]


def main(argv: Optional[List[str]] = None) -> None:
    """Plant the faults asked for, then run the module as ``python -m MODULE ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="stage_faults")
    parser.add_argument("--no-backoff", action="store_true")
    parser.add_argument("--exit-on-write", default=None)
    options = parser.parse_args(args[:split])
    module, rest = args[split + 1], args[split + 2:]
    if options.no_backoff:
        _no_backoff()
    if options.exit_on_write:
        _exit_on_write(options.exit_on_write)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
