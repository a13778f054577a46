"""How long the stages take to give up on a failing store, with botocore's real backoff.

    python benchmarks/store_fault_budget.py [--repeats N]

moto's S3 server runs on 127.0.0.1 behind the fault-injecting proxy of the
reliability tests (tests/reliability_support.py). Printed, per scenario: attempts
seen by the proxy and seconds until the store call, train_model or serve_model
gave up (or succeeded), with the default budget (store.DEFAULT_MAX_ATTEMPTS
attempts, standard retry mode, its jittered exponential backoff not shortened).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.simulate import simulate_tranche, tranche_key  # noqa: E402
from pipeline.store import DEFAULT_MAX_ATTEMPTS, StoreError, open_store  # noqa: E402
from testing_support.models import publish_model, simple_model  # noqa: E402
from testing_support.stages import run_stage, stage_env  # noqa: E402
from testing_support.stores import FaultProxy, moto_server  # noqa: E402

AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
       "AWS_DEFAULT_REGION": "us-east-1"}


def _timed(action: Callable[[], str]) -> Tuple[float, str]:
    started = time.perf_counter()
    outcome = action()
    return time.perf_counter() - started, outcome


def _store_call(url: str, **options: float) -> Callable[[], str]:
    def call() -> str:
        store = open_store(url, **options)  # type: ignore[arg-type]
        try:
            store.read_bytes("models/latest.json")
            return "read"
        except StoreError as exc:
            return f"StoreError ({str(exc)[-40:]})"
    return call


def _stage(module: str, args: List[str], env: Dict[str, str]) -> Callable[[], str]:
    def call() -> str:
        done = run_stage(module, args, env, timeout=300)
        return f"exit {done.returncode}"
    return call


def main() -> int:
    """Run each scenario a few times and print attempts and seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats

    with moto_server() as endpoint:
        return measure(endpoint, repeats)


def measure(endpoint: str, repeats: int) -> int:
    """Each scenario against moto's server at ``endpoint``, behind the fault proxy."""
    import boto3

    os.environ.update(AWS, AWS_ENDPOINT_URL=endpoint)
    boto3.client("s3").create_bucket(Bucket="fault-budget")
    url = "s3://fault-budget/project"
    direct = open_store(url)
    direct.write_bytes(tranche_key("2026-11-13T23:00:00"), simulate_tranche(1000, seed=3).to_csv())
    publish_model(direct, simple_model(1.0))

    with FaultProxy(endpoint) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        env = stage_env(dict(AWS, AWS_ENDPOINT_URL=proxy.url))
        scenarios: List[Tuple[str, Dict[str, object], Callable[[], str]]] = [
            ("store read, 503 on every attempt (default budget)",
             {"fail_all": True}, _store_call(url)),
            (f"store read, 503 on the first {DEFAULT_MAX_ATTEMPTS - 1} attempts",
             {"fail_first": DEFAULT_MAX_ATTEMPTS - 1}, _store_call(url)),
            ("store read, every attempt past a 1 s read timeout (3 attempts)",
             {"delay_first": 99, "delay_seconds": 1.5},
             _store_call(url, max_attempts=3, timeout_seconds=1.0)),
            ("train_model, 503 on every request",
             {"fail_all": True}, _stage("pipeline.train_model", [url], env)),
            ("serve_model start-up, 503 on every request",
             {"fail_all": True},
             _stage("pipeline.serve_model", [url, "--host", "127.0.0.1", "--port", "0"], env)),
        ]
        print(f"default budget: {DEFAULT_MAX_ATTEMPTS} attempts, botocore standard retry mode")
        for name, plan, action in scenarios:
            seconds: List[float] = []
            attempts: List[int] = []
            outcome = ""
            for _ in range(repeats):
                proxy.plan.reset(fail_all=False, fail_first=0, delay_first=0, pass_first=0,
                                 only_methods=())
                proxy.plan.reset(**plan)
                elapsed, outcome = _timed(action)
                seconds.append(elapsed)
                attempts.append(proxy.plan.count())
            print(f"{name}:\n  outcome {outcome}; requests at the proxy {attempts}; seconds "
                  f"min {min(seconds):.2f} median {statistics.median(seconds):.2f} "
                  f"max {max(seconds):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
