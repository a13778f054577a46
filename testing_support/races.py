"""Run train_model several times at once on each of some stores (for tests and benchmarks).

    python -m testing_support.races [--contenders 4] STORE_URL... [-- TRAIN_ARGS...]

Imports the stage once, then for each store in turn forks ``--contenders`` children
that meet at a barrier and each run ``train_model.main([STORE_URL, *TRAIN_ARGS])``
with its stderr in a file: separate processes publishing at the same moment, without
paying the imports once per process. Prints one JSON line per store:
``{"url": ..., "runs": [{"exit": N, "stderr": "..."}, ...]}``.

Also holds the checks a test or benchmark applies to what a race left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from pipeline.artefacts import MODELS_PREFIX, POINTER_KEY, ModelUnavailable, load_latest, sha256_hex
from pipeline.metadata import read_metadata, read_realised
from pipeline.model_format import DispatchModel
from pipeline.store import Store

PUBLISHED = re.compile(r"INFO train_model: published model (\S+) ")
CHAMPION = re.compile(r"gate champion: pass: (?:.*?champion (\S+?)(?:'s| knows)|(no champion))")


def _race(url: str, contenders: int, train_args: Sequence[str]) -> List[Dict[str, Any]]:
    import multiprocessing

    from pipeline import train_model

    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(contenders)
    logs = [tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
            for _ in range(contenders)]

    def contend(log_path: str) -> None:
        with open(log_path, "w") as log:
            os.dup2(log.fileno(), 2)
        barrier.wait(timeout=60)
        code = 1
        try:
            code = train_model.main([url, *train_args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            sys.stderr.flush()
            os._exit(code)

    workers = [context.Process(target=contend, args=(log.name,)) for log in logs]
    for worker in workers:
        worker.start()
    runs = []
    for worker, log in zip(workers, logs):
        worker.join(timeout=120)
        runs.append({"exit": worker.exitcode, "stderr": open(log.name).read()})
        log.close()
        os.unlink(log.name)
    return runs


def main(argv: Optional[List[str]] = None) -> None:
    """Race train_model on every store named; one JSON line of outcomes per store."""
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(prog="races")
    parser.add_argument("--contenders", type=int, default=4)
    parser.add_argument("urls", nargs="+")
    options = parser.parse_args(args[:split])
    import boto3  # noqa: F401  (imported once here, not in every child)
    import botocore.config  # noqa: F401

    for url in options.urls:
        runs = _race(url, options.contenders, args[split + 1:])
        print(json.dumps({"url": url, "runs": runs}), flush=True)


# --- checks on what a race left behind -------------------------------------------------------


def published_version(stderr: str) -> Optional[str]:
    """The version a train_model run says it published, or None."""
    found = PUBLISHED.search(stderr)
    return found.group(1) if found else None


def champion_read(stderr: str) -> Optional[str]:
    """The version a publishing run's champion gate compared against ('' for none)."""
    found = CHAMPION.search(stderr)
    if found is None:
        raise AssertionError(f"no champion decision in the log:\n{stderr}")
    return found.group(1) or ""


def model_problems(store: Store, complete: bool = True) -> List[str]:
    """Every version whose objects are missing, altered or inconsistent.

    With ``complete=False`` a lone model.json (a run killed before its metadata) passes.
    """
    keys = [k for k in store.list_keys(MODELS_PREFIX) if k != POINTER_KEY]
    versions = sorted({k[len(MODELS_PREFIX):].split("/")[0] for k in keys})
    problems = []
    for version in versions:
        base = f"{MODELS_PREFIX}{version}/"
        found = {k for k in keys if k.startswith(base)}
        # Realised-accuracy records (pipeline.history) sit beside a model: each names it.
        for key in sorted(k for k in found if k.startswith(base + "realised/")):
            found.discard(key)
            if read_realised(store.read_bytes(key)).model_version != version:
                problems.append(f"{version}: {key} describes another model")
        if not complete and found == {base + "model.json"}:
            DispatchModel.from_json(store.read_bytes(base + "model.json"))
            continue
        if found != {base + "model.json", base + "metadata.json"}:
            problems.append(f"{version}: objects {sorted(found)}")
            continue
        model = store.read_bytes(base + "model.json")
        metadata = read_metadata(store.read_bytes(base + "metadata.json"))
        if metadata.model_version != version:
            problems.append(f"{version}: metadata names {metadata.model_version}")
        if metadata.model_sha256 != sha256_hex(model):
            problems.append(f"{version}: model.json does not match its metadata's sha256")
        DispatchModel.from_json(model)
    return problems


def race_problems(
    store: Store, runs: Sequence[Dict[str, Any]], initial: Optional[str], complete: bool = True
) -> List[str]:
    """What is wrong after racing runs over a pointer that named ``initial`` (None: nothing).

    Every run exits 0 or 7 (lost, with one ERROR line); the runs that say they published
    moved the pointer one after another, from ``initial`` to the version it names now
    (each one's champion was the one before it); every model object is intact and the
    pointer's model loads the way serve_model loads it.
    """
    from pipeline.api.serving import build_serving_model

    problems = []
    edges: Dict[str, str] = {}
    for number, run in enumerate(runs):
        stderr, code = run["stderr"], run["exit"]
        errors = [line for line in stderr.splitlines() if " ERROR " in line]
        version = published_version(stderr)
        if code == 7:
            if len(errors) != 1 or "another run" not in errors[0] or version:
                problems.append(f"run {number} exit 7 without one lost-race ERROR line: {errors}")
        elif code != 0 or errors:
            problems.append(f"run {number} exited {code}: {errors or stderr[-2000:]}")
        elif version is not None:
            previous = champion_read(stderr)
            if previous in edges:
                problems.append(f"runs published {edges[previous]} and {version} both over "
                                f"{previous or 'nothing'}")
            edges[previous] = version
    if not edges and any(run["exit"] == 7 for run in runs):
        problems.append("runs lost a race that no run won")
    try:
        loaded = load_latest(store)
        build_serving_model(loaded)
    except ModelUnavailable as exc:
        return problems + [f"the pointer's model does not load: {exc}"] + model_problems(
            store, complete)
    walked, at = 0, initial or ""
    while at in edges and walked <= len(edges):
        at, walked = edges[at], walked + 1
    if walked != len(edges) or at != loaded.version:
        problems.append(f"publishers {edges} are not one chain from {initial} to the pointer's "
                        f"{loaded.version}")
    return problems + model_problems(store, complete)


if __name__ == "__main__":
    main()
