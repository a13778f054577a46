"""A year of Fridays: the whole weekly cycle, week after week, under load and store faults.

The machinery behind ``benchmarks/year_of_fridays.py`` and ``tests/test_year_of_fridays.py``
(issue 12). moto's S3 server holds the store; train runs and the models command reach it
through one fault-injecting proxy, the two serve_model replicas (refreshing every second)
through another that never faults; a load generator process sends valid single and batch
requests to both replicas the whole time, for the product codes every model knows.

Each week delivers a tranche of some kind (good, drifted, a contract breach, delivered
twice, older than the newest, a new product code, a vanishing one) and runs train_model
in some way (normal, S3 503 bursts, an outage then a re-run, stalls, a lost response,
killed mid-publish then re-run, two runs at once, a rollback with the models command
first); then checks the week's invariants. ``python -m testing_support.fridays loadgen`` is the
load generator.

With ``catalogue=N`` the shop is a long-tailed catalogue of N parts (``pipeline.simulate``'s
``catalogue_world``: popularity 1/rank, new parts every week, a warehouse-wide change from week
to week): every good week delivers that world's next week, the load generator's batches mix
parts from the whole catalogue (some of them unknown to the model, answered null), and every
week that publishes checks that every order of a fresh draw whose part appears in the model's
history is answered, and measures the tail's accuracy against the known truth.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.util
import json
import math
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pipeline.api.routes import BATCH_PATH, HEALTH_PATH, SINGLE_PATH
from pipeline.artefacts import MODELS_PREFIX, POINTER_KEY, ModelUnavailable, load_latest
from pipeline.simulate import (
    DEFAULT_PRODUCT_CODES, CatalogueWorld, catalogue_world, simulate_tranche, tranche_key,
)
from pipeline.store import Store, open_store

CORE_CODES = ("SKU001", "SKU002", "SKU003")  # in every tranche, so every model knows them
NEW_CODES = DEFAULT_PRODUCT_CODES + ("SKU006",)
FEWER_CODES = DEFAULT_PRODUCT_CODES[:4]
FIRST_FRIDAY = datetime(2026, 1, 2, 23, 0, tzinfo=timezone.utc)
BATCH_ROWS = 20
SCORE_BATCH_ROWS = 1000
TAIL_ROWS = 30
EXIT_OK, EXIT_STORE, EXIT_BAD_DATA, EXIT_CONCURRENT, EXIT_CRASHED = 0, 3, 5, 7, 86

GOOD_KINDS = ("good", "drifted", "twice", "older", "new-code", "vanish-code")
TRANCHE_DECK = ("good", "good", "drifted", "twice", "older", "new-code", "vanish-code",
                "breach", "breach", "breach")
RUN_KINDS = ("normal", "503-burst", "outage", "stall", "lost-response", "killed",
             "two-at-once", "rollback")
RUN_DECK = ("normal",) + RUN_KINDS[1:]
PUBLISH_FAULTS = ("lost-response", "killed", "two-at-once")
FRESH_KINDS = ("good", "drifted", "new-code", "vanish-code")
CRASH_POINTS = ("models/*/model.json", "models/*/metadata.json", POINTER_KEY)


def models_command_available() -> bool:
    """Whether the models command (pipeline.models, with its rollback) exists."""
    return importlib.util.find_spec("pipeline.models") is not None


def breach_cases() -> Dict[str, Callable[[], bytes]]:
    """Every kind of contract breach the bad-tranche tests know, by name."""
    from testing_support.tranches import BAD_TRANCHES

    return dict(BAD_TRANCHES)


@dataclass(frozen=True)
class Week:
    """One Friday: what is delivered and how train_model runs."""

    number: int
    tranche: str
    run: str
    breach: str = ""
    seed: int = 0

    def describe(self) -> str:
        """The week in a few words."""
        what = f"breach:{self.breach}" if self.tranche == "breach" else self.tranche
        return f"week {self.number:2d}: {what}, {self.run}"


def schedule(weeks: int, seed: int) -> List[Week]:
    """A seeded, varied year: shuffled decks of tranche and run kinds, every breach in turn."""
    rng = random.Random(seed)
    cases = sorted(breach_cases())
    rng.shuffle(cases)
    tranches: List[str] = []
    runs: List[str] = []
    while len(tranches) < weeks:
        deck = list(TRANCHE_DECK)
        rng.shuffle(deck)
        tranches += deck
    while len(runs) < weeks:
        deck = list(RUN_DECK)
        rng.shuffle(deck)
        runs += deck
    for i in range(weeks):  # faults of publishing need a tranche that can be published
        if runs[i] in PUBLISH_FAULTS and tranches[i] == "breach":
            for j in range(i + 1, weeks):
                if tranches[j] in FRESH_KINDS and runs[j] not in PUBLISH_FAULTS:
                    runs[i], runs[j] = runs[j], runs[i]
                    break
    plan, breaches = [], 0
    for number in range(1, weeks + 1):
        tranche, run = tranches[number - 1], runs[number - 1]
        breach = ""
        if tranche == "breach":
            breach, breaches = cases[breaches % len(cases)], breaches + 1
        plan.append(Week(number, tranche, run, breach, rng.randrange(1, 10**6)))
    return plan


def friday(number: int) -> str:
    """The ISO timestamp of a week's delivery."""
    return (FIRST_FRIDAY + timedelta(days=7 * number)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- watching the pointer and the replicas ------------------------------------------------------


class Watch:
    """Threads sampling the store's pointer and every replica's served version.

    Records each change of the pointer (time, version) and, per replica, the stretches
    during which it served a version other than the pointer's.
    """

    def __init__(self, store: Store, ports: Sequence[int], every: float = 0.05) -> None:
        self.store, self.ports, self.every = store, list(ports), every
        self.lock = threading.Lock()
        self.changes: List[Tuple[float, str]] = []
        self.served: Dict[int, str] = {}
        self.stale_since: Dict[int, Optional[float]] = {port: None for port in self.ports}
        self.stale_spells: List[Tuple[int, float, float]] = []  # port, start, seconds
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._pointer, daemon=True)] + [
            threading.Thread(target=self._replica, args=(port,), daemon=True)
            for port in self.ports]

    def start(self) -> "Watch":
        """Start sampling; returns once the pointer has been read once."""
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 10
        while not self.changes and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def pointer_version(self) -> Optional[str]:
        """The pointer's version as last seen."""
        with self.lock:
            return self.changes[-1][1] if self.changes else None

    def last_change(self) -> float:
        """When the pointer last changed (monotonic seconds)."""
        with self.lock:
            return self.changes[-1][0] if self.changes else 0.0

    def _pointer(self) -> None:
        while not self._stop.is_set():
            try:
                version = load_latest_version(self.store)
            except Exception as exc:  # the watcher reports, the week's checks decide
                with self.lock:
                    self.errors.append(f"pointer watch: {exc}")
                version = None
            now = time.monotonic()
            with self.lock:
                if version is not None and (not self.changes or self.changes[-1][1] != version):
                    self.changes.append((now, version))
            self._stop.wait(self.every)

    def _replica(self, port: int) -> None:
        while not self._stop.is_set():
            version = replica_version(port)
            now = time.monotonic()
            with self.lock:
                if version is not None:
                    self.served[port] = version
                    pointer = self.changes[-1] if self.changes else None
                    since = self.stale_since[port]
                    if pointer is not None and version != pointer[1]:
                        if since is None:
                            self.stale_since[port] = pointer[0]
                    elif since is not None:
                        self.stale_spells.append((port, since, now - since))
                        self.stale_since[port] = None
            self._stop.wait(self.every)

    def longest_stale(self, since: float = 0.0) -> float:
        """The longest a replica served a superseded model (spells begun after ``since``)."""
        now = time.monotonic()
        with self.lock:
            spells = [s for _, start, s in self.stale_spells if start >= since]
            spells += [now - start for start in self.stale_since.values()
                       if start is not None and start >= since]
        return max(spells, default=0.0)

    def wait_for_pointer(self, version: Optional[str], timeout: float = 5.0) -> None:
        """Until the pointer watcher has seen ``version`` (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while self.pointer_version() != version and time.monotonic() < deadline:
            time.sleep(0.01)


def load_latest_version(store: Store) -> Optional[str]:
    """The pointer's model_version (None when nothing is published)."""
    from pipeline.artefacts import read_pointer

    found = read_pointer(store)
    return None if found is None else found[0].model_version


def replica_version(port: int, timeout: float = 2.0) -> Optional[str]:
    """The model version a replica's /health reports, or None if it does not answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", HEALTH_PATH)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        return str(json.loads(body)["model_version"])
    except (OSError, ValueError, KeyError):
        return None
    finally:
        connection.close()


# --- the load generator (a process of its own) ---------------------------------------------------


def loadgen_main(
    ports: Sequence[int], out: str, pause: float, seed: int,
    core: Sequence[str] = CORE_CODES, tail: Sequence[str] = (),
) -> None:
    """Send valid single and batch requests to every port until SIGTERM; write a summary.

    Single requests and half of each batch ask for ``core`` parts, which every model knows;
    the other half of a batch asks for ``tail`` parts (when given), which a model may not
    know: those answers may be null, the core ones never.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    latencies: Dict[str, List[float]] = {"single": [], "batch": []}
    failures: List[str] = []
    counts: Counter = Counter()

    def client(port: int, number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        connection: Optional[http.client.HTTPConnection] = None
        sent = 0
        while not stop.is_set():
            kind = "batch" if sent % 5 == 4 else "single"
            rows = [{"product_code": rng.choice(tail if tail and i % 2 else core),
                     "orders_placed": rng.randint(0, 400)}
                    for i in range(BATCH_ROWS if kind == "batch" else 1)]
            body = json.dumps(rows if kind == "batch" else rows[0]).encode()
            started = time.perf_counter()
            problem = None
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("POST", BATCH_PATH if kind == "batch" else SINGLE_PATH,
                                   body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                data = response.read()
                if response.status != 200:
                    problem = f"{response.status} {data[:200]!r}"
                else:
                    answer = json.loads(data)
                    estimate = answer["est_hours_to_dispatch"]
                    estimates = estimate if kind == "batch" else [estimate]
                    must = [e for e, row in zip(estimates, rows) if row["product_code"] in core]
                    given = [e for e in estimates if e is not None]
                    if (len(estimates) != len(rows) or not answer.get("model_version")
                            or None in must
                            or not all(math.isfinite(e) and e >= 0 for e in given)):
                        problem = f"bad answer {data[:200]!r}"
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if connection is not None:
                    connection.close()
                connection = None
            elapsed = time.perf_counter() - started
            sent += 1
            with lock:
                counts[kind] += 1
                latencies[kind].append(elapsed)
                if problem is not None:
                    counts["failed"] += 1
                    failures.append(f"{time.time():.3f} port {port} {kind}: {problem}")
            stop.wait(pause)

    threads = [threading.Thread(target=client, args=(port, i), daemon=True)
               for i, port in enumerate(ports)]
    for thread in threads:
        thread.start()
    while not stop.is_set():
        stop.wait(0.2)
    for thread in threads:
        thread.join(timeout=15)
    with lock:
        summary = {
            "single": counts["single"], "batch": counts["batch"], "failed": counts["failed"],
            "failures": failures[:50],
            "latency_ms": {kind: percentiles(values) for kind, values in latencies.items()},
            "all_ms": percentiles(latencies["single"] + latencies["batch"]),
        }
    Path(out).write_text(json.dumps(summary))


def tranche_codes(data: bytes) -> List[str]:
    """The product code of every row of a tranche's CSV."""
    lines = data.decode().splitlines()
    column = lines[0].split(",").index("product_code")
    return [line.split(",")[column] for line in lines[1:] if line]


def batch_estimates(
    port: int, codes: Sequence[str], orders: Sequence[int]
) -> List[Optional[float]]:
    """The service's estimate for every row (None where it does not know the part)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    estimates: List[Optional[float]] = []
    try:
        for start in range(0, len(codes), SCORE_BATCH_ROWS):
            end = start + SCORE_BATCH_ROWS
            rows = [{"product_code": c, "orders_placed": o}
                    for c, o in zip(codes[start:end], orders[start:end])]
            connection.request("POST", BATCH_PATH, body=json.dumps(rows).encode(),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                raise AssertionError(f"scoring batch answered {response.status}: {answer}")
            estimates += answer["est_hours_to_dispatch"]
    finally:
        connection.close()
    return estimates


def percentiles(seconds: Sequence[float]) -> Dict[str, float]:
    """p50 and p99 in milliseconds (0 for no samples)."""
    if not seconds:
        return {"p50": 0.0, "p99": 0.0}
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p99": at(0.99)}


# --- the year ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One train_model (or models command) process of a week."""

    label: str
    exit: int
    stderr: str


@dataclass
class Report:
    """What a year showed."""

    weeks: List[Week] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    exits: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    published: int = 0
    kept: int = 0
    rollbacks: int = 0
    longest_stale: float = 0.0
    load: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    catalogue: List[str] = field(default_factory=list)

    def lines(self, refresh: float) -> List[str]:
        """The printed figures."""
        load = self.load
        tranches = Counter(w.tranche for w in self.weeks)
        runs = Counter(w.run for w in self.weeks)
        breaches = sorted({w.breach for w in self.weeks if w.breach})
        lat = load.get("latency_ms", {})
        return [
            f"weeks: {len(self.weeks)} in {self.seconds:.0f} s",
            "tranches: " + ", ".join(f"{k} {v}" for k, v in sorted(tranches.items()))
            + f" ({len(breaches)} kinds of breach)",
            "runs: " + ", ".join(f"{k} {v}" for k, v in sorted(runs.items())),
            "train runs by exit status: " + ", ".join(
                f"{k}: {v}" for k, v in sorted(self.exits.items())),
            f"models published: {self.published}, deliberately kept or unchanged: {self.kept}, "
            f"rollbacks: {self.rollbacks}",
            "faults injected: " + (", ".join(
                f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"),
            f"requests: {load.get('single', 0) + load.get('batch', 0):,} sent "
            f"({load.get('single', 0):,} single, {load.get('batch', 0):,} batches of "
            f"{BATCH_ROWS}), {load.get('failed', 'n/a')} failed",
            f"longest a replica served a superseded model: {self.longest_stale:.2f} s "
            f"(bound: refresh {refresh:g} s + 2 s)",
            f"latency: single p50 {lat.get('single', {}).get('p50', 0)} ms, "
            f"p99 {lat.get('single', {}).get('p99', 0)} ms; batch p50 "
            f"{lat.get('batch', {}).get('p50', 0)} ms, p99 {lat.get('batch', {}).get('p99', 0)} "
            f"ms; all p99 {load.get('all_ms', {}).get('p99', 0)} ms",
            *self.catalogue,
            f"broken invariants: {len(self.problems)}",
        ]


class Year:
    """A store on moto behind proxies, two replicas, a load generator, and the weeks played."""

    def __init__(
        self, endpoint: str, workdir: Path, weeks: int, seed: int, rows: int = 400,
        refresh: float = 1.0, log: Callable[[str], None] = print, catalogue: int = 0,
    ) -> None:
        self.endpoint, self.workdir, self.seed, self.rows = endpoint, workdir, seed, rows
        self.world: Optional[CatalogueWorld] = (
            catalogue_world(catalogue, rows, weeks + 1, seed) if catalogue else None)
        self.refresh, self.log = refresh, log
        self.rollback = models_command_available()
        self.weeks = schedule(weeks, seed)
        self.report = Report(weeks=self.weeks)
        self.rng = random.Random(seed)
        self.cases = breach_cases()
        self._cleanup: List[Callable[[], None]] = []
        self.published_versions: List[str] = []
        self.objects: Dict[str, str] = {}
        self.newest_key = ""
        self.newest_good = True
        self.newest_good_bytes = b""
        self.last_runs: List[Run] = []

    # -- set-up and tear-down

    def __enter__(self) -> "Year":
        import boto3

        from testing_support.servers import ServeProcess, refreshing
        from testing_support.stages import AWS_TEST_ENV, stage_env
        from testing_support.stores import FaultProxy

        bucket = f"fridays-{self.seed}-{int(time.time() * 1000) % 10**8}"
        client = boto3.client("s3", endpoint_url=self.endpoint, **_credentials(AWS_TEST_ENV))
        client.create_bucket(Bucket=bucket)
        self.url = f"s3://{bucket}/pipeline"
        self.train_proxy = FaultProxy(self.endpoint).__enter__()
        self._cleanup.append(lambda: self.train_proxy.__exit__())
        self.serve_proxy = FaultProxy(self.endpoint).__enter__()
        self._cleanup.append(lambda: self.serve_proxy.__exit__())
        self._count_faults()
        self.train_env = stage_env(dict(AWS_TEST_ENV, AWS_ENDPOINT_URL=self.train_proxy.url))
        serve_env = stage_env(dict(AWS_TEST_ENV, AWS_ENDPOINT_URL=self.serve_proxy.url))
        self.store = _direct_store(self.url, self.endpoint)

        self._deliver(0, self._good_tranche(0, self.seed, DEFAULT_PRODUCT_CODES), good=True)
        first = self._train("bootstrap")
        if first.exit != EXIT_OK:
            raise RuntimeError(f"the first run did not publish:\n{first.stderr}")
        self._remember_objects()
        self.replicas = []
        for _ in range(2):
            service = ServeProcess(self.url, serve_env, self.workdir,
                                   args=refreshing(self.refresh))
            self._cleanup.append(service.close)
            self.replicas.append(service)
        for service in self.replicas:
            service.wait_listening(timeout=60)
        self.watch = Watch(self.store, [s.port for s in self.replicas]).start()
        self._cleanup.append(self.watch.stop)
        self.load_out = self.workdir / "load.json"
        self.loadgen = subprocess.Popen(
            [sys.executable, "-m", "testing_support.fridays", "loadgen", "--out",
             str(self.load_out),
             *(f"--port={s.port}" for s in self.replicas), *self._loadgen_codes()],
            cwd=Path(__file__).resolve().parents[1], env=self.train_env,
        )
        self._cleanup.append(self._stop_loadgen)
        return self

    def __exit__(self, *exc: object) -> None:
        for step in reversed(self._cleanup):
            try:
                step()
            except Exception as error:  # tear everything down whatever fails
                self.log(f"clean-up: {error!r}")
        self._cleanup.clear()

    def _stop_loadgen(self) -> None:
        if self.loadgen.poll() is None:
            self.loadgen.send_signal(signal.SIGTERM)
            try:
                self.loadgen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.loadgen.kill()
                self.loadgen.wait()
        if self.load_out.exists():
            self.report.load = json.loads(self.load_out.read_text())

    def _count_faults(self) -> None:
        plan = self.train_proxy.plan
        decide = plan.decide

        def counting(method: str, path: str) -> Tuple[str, int]:
            action, index = decide(method, path)
            if action == "fail":
                self.report.faults["S3 503 in outages" if plan.fail_all else "S3 503"] += 1
            elif action == "delay":
                self.report.faults["lost response" if plan.delay_after_forward else "stall"] += 1
            return action, index

        plan.decide = counting  # type: ignore[method-assign]

    # -- the year

    def play(self) -> Report:
        """Every week in turn, then the load generator's figures; problems in the report."""
        started = time.monotonic()
        for week in self.weeks:
            began = time.monotonic()
            problems = [f"{week.describe()}: {p}" for p in self.play_week(week)]
            self.report.problems += problems
            self.log(f"{week.describe():<48} {time.monotonic() - began:5.1f} s "
                     f"{' '.join(self._outcome(run) for run in self.last_runs):<40} "
                     f"{'ok' if not problems else 'BROKEN: ' + '; '.join(problems)}")
        self._stop_loadgen()
        self.report.longest_stale = self.watch.longest_stale()
        load = self.report.load
        if not load:
            self.report.problems.append("the load generator reported nothing")
        elif load["failed"]:
            self.report.problems.append(
                f"{load['failed']} valid requests failed: {load['failures'][:5]}")
        self.report.seconds = time.monotonic() - started
        return self.report

    def play_week(self, week: Week) -> List[str]:
        """One Friday; the invariants it broke."""
        problems: List[str] = []
        began = time.monotonic()
        if week.run == "rollback" and self.rollback:
            problems += self._rollback(week)
        self._deliver_week(week)
        good = self.newest_good
        before = self._models()
        pointer_before = self.watch.pointer_version()
        runs = self._runs(week, good)
        self.last_runs = runs
        for run in runs:
            self.report.exits[run.exit] += 1
        problems += self._check_runs(week, runs, good, pointer_before)
        problems += self._check_store(before, good, pointer_before)
        problems += self._check_replicas(began)
        if self.world is not None and good and week.tranche in FRESH_KINDS:
            problems += self._score_catalogue(week.number)
        return problems

    def _score_catalogue(self, number: int) -> List[str]:
        """Every order of a fresh draw whose part the model's history holds is answered."""
        assert self.world is not None
        loaded = load_latest(self.store)
        if loaded.metadata.tranche.key != self.newest_key:
            return []
        seen = set()
        for entry in loaded.metadata.history:
            seen |= set(tranche_codes(self.store.read_bytes(str(entry.key))))
        newest = Counter(tranche_codes(self.newest_good_bytes))
        fresh = self.world.tranche(number, draw=1)
        codes = [str(c) for c in fresh.product_code]
        estimates = batch_estimates(self.replicas[0].port, codes,
                                    [int(o) for o in fresh.orders_placed])
        known = [c in seen for c in codes]
        missing = sum(k and e is None for k, e in zip(known, estimates))
        tail = [i for i, c in enumerate(codes)
                if 0 < newest[c] < TAIL_ROWS and estimates[i] is not None]
        error = sum(abs(fresh.hours_to_dispatch[i] - estimates[i]) for i in tail)  # type: ignore
        floor = sum(abs(fresh.hours_to_dispatch[i] - fresh.expected_hours[i]) for i in tail)
        answered = sum(e is not None for e in estimates) / len(codes)
        self.report.catalogue.append(
            f"week {number:2d}: answered {answered:.2%} of a fresh draw's orders "
            f"({sum(known) / len(codes):.2%} have a part in the history); parts with 1-"
            f"{TAIL_ROWS - 1} rows: {len(tail)} orders, MAE / noise floor "
            f"{error / floor if floor else float('nan'):.3f}")
        if missing:
            return [f"{missing} orders of parts in the model's history were not answered"]
        return []

    # -- deliveries

    def _deliver(self, number: int, data: bytes, good: bool, older: bool = False) -> str:
        when = friday(number)
        if older:
            when = (FIRST_FRIDAY + timedelta(days=7 * number - 9)).strftime("%Y-%m-%dT%H:%M:%SZ")
        key = tranche_key(when)
        self.store.write_bytes(key, data)
        if not older:
            self.newest_key, self.newest_good = key, good
            if good:
                self.newest_good_bytes = data
        return key

    def _good_tranche(self, number: int, seed: int, codes: Sequence[str]) -> bytes:
        """A week's good tranche: the catalogue's week ``number``, or the five-part world's."""
        if self.world is not None:
            return self.world.tranche(number).to_csv()
        return simulate_tranche(self.rows, seed=seed, week=number, product_codes=codes).to_csv()

    def _loadgen_codes(self) -> List[str]:
        """The load generator's parts: three every model knows and, for a catalogue, the rest."""
        if self.world is None:
            return []
        core = [str(c) for c in self.world.codes[self.world.introduced == 0][:3]]
        return [f"--core={','.join(core)}", f"--tail={','.join(map(str, self.world.codes))}"]

    def _deliver_week(self, week: Week) -> None:
        n, seed, rows = week.number, week.seed, self.rows
        if week.tranche == "breach":
            self._deliver(n, self.cases[week.breach](), good=False)
        elif week.tranche == "twice":
            self._deliver(n, self.newest_good_bytes, good=True)
        elif week.tranche == "older" and self.world is not None:
            self._deliver(n, self.world.tranche(n - 1, draw=2).to_csv(), good=True, older=True)
        elif week.tranche == "older":
            self._deliver(n, simulate_tranche(rows, seed=seed, week=n).to_csv(), good=True,
                          older=True)
        elif self.world is not None:
            self._deliver(n, self._good_tranche(n, seed, DEFAULT_PRODUCT_CODES), good=True)
        else:
            codes = {"new-code": NEW_CODES, "vanish-code": FEWER_CODES}.get(
                week.tranche, DEFAULT_PRODUCT_CODES)
            drift = 60 if week.tranche == "drifted" else n
            self._deliver(n, simulate_tranche(rows, seed=seed, week=drift,
                                              product_codes=codes).to_csv(), good=True)

    # -- runs

    def _train(self, label: str, options: Sequence[str] = (), faults: Sequence[str] = ()) -> Run:
        return self._finish(label, self._start(options, faults))

    def _start(self, options: Sequence[str] = (), faults: Sequence[str] = ()) -> Any:
        from testing_support.stages import REPO_ROOT, stage_command

        return subprocess.Popen(
            stage_command("pipeline.train_model", [self.url, *options], faults),
            cwd=REPO_ROOT, env=self.train_env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )

    def _finish(self, label: str, process: Any) -> Run:
        try:
            _, stderr = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            stderr += "\n(timed out after 180 s and killed)"
        return Run(label, process.returncode, stderr)

    def _runs(self, week: Week, good: bool) -> List[Run]:
        plan = self.train_proxy.plan
        kind = week.run
        if kind == "503-burst":
            plan.reset(pass_first=self.rng.randint(0, 4), fail_first=self.rng.randint(1, 3),
                       fail_all=False, delay_first=0, delay_after_forward=False, only_methods=())
        elif kind == "stall":
            plan.reset(pass_first=self.rng.randint(0, 4), fail_first=0, fail_all=False,
                       delay_first=self.rng.randint(1, 2), delay_seconds=1.0,
                       delay_after_forward=False, only_methods=())
        elif kind == "lost-response":
            plan.reset(pass_first=self.rng.randint(0, 2), fail_first=0, fail_all=False,
                       delay_first=1, delay_seconds=2.5, delay_after_forward=True,
                       only_methods=("PUT",))
        try:
            if kind == "lost-response":
                return [self._train("lost-response", ("--store-timeout", "1"))]
            if kind == "outage":
                plan.reset(pass_first=self.rng.randint(0, 4), fail_first=0, fail_all=True,
                           delay_first=0, delay_after_forward=False, only_methods=())
                self.report.faults["outages"] += 1
                down = self._train("outage", ("--store-attempts", "2"))
                self._clear_faults()
                return [down, self._train("after the outage")]
            if kind == "killed":
                point = self.rng.choice(CRASH_POINTS)
                killed = self._train("killed", faults=("--exit-on-write", point))
                if killed.exit == EXIT_CRASHED:
                    self.report.faults["killed mid-publish"] += 1
                return [killed, self._train("after the kill")]
            if kind == "two-at-once":
                self.report.faults["two runs at once"] += 1
                both = [self._start(), self._start()]
                return [self._finish(f"racer {i}", p) for i, p in enumerate(both)]
            return [self._train("after the rollback" if kind == "rollback" else kind)]
        finally:
            self._clear_faults()

    @staticmethod
    def _outcome(run: Run) -> str:
        from testing_support.races import published_version

        word = ("published" if published_version(run.stderr) else "kept") if run.exit == 0 else ""
        return f"{run.label.replace(' ', '-')}={run.exit}{'(' + word + ')' if word else ''}"

    def _clear_faults(self) -> None:
        self.train_proxy.plan.reset(pass_first=0, fail_first=0, fail_all=False, delay_first=0,
                                    delay_after_forward=False, only_methods=())

    def _rollback(self, week: Week) -> List[str]:
        began = time.monotonic()
        current = self.watch.pointer_version()
        choices = [v for v in self.published_versions if v != current]
        if not choices:
            return []
        target = self.rng.choice(choices)
        from testing_support.stages import REPO_ROOT

        done = subprocess.run(
            [sys.executable, "-m", "pipeline.models", self.url, "rollback", target,
             "--reason", f"year of Fridays, week {week.number}", "--by", "fridays"],
            cwd=REPO_ROOT, env=self.train_env, capture_output=True, text=True, timeout=120,
        )
        self.report.rollbacks += 1
        if done.returncode != 0:
            return [f"rollback to {target} exited {done.returncode}: {done.stderr[-500:]}"]
        problems = []
        if load_latest_version(self.store) != target:
            problems.append(f"after the rollback the pointer names "
                            f"{load_latest_version(self.store)}, not {target}")
        return problems + self._check_replicas(began)

    # -- checks

    def _models(self) -> Dict[str, str]:
        return {key: hashlib.sha256(self.store.read_bytes(key)).hexdigest()
                for key in self.store.list_keys(MODELS_PREFIX)}

    def _remember_objects(self) -> List[str]:
        """Record every immutable model object; any that changed since first seen is a problem."""
        problems = []
        for key, digest in self._models().items():
            if key == POINTER_KEY:
                continue
            if self.objects.setdefault(key, digest) != digest:
                problems.append(f"{key} was rewritten")
        return problems

    def _check_runs(
        self, week: Week, runs: List[Run], good: bool, pointer_before: Optional[str]
    ) -> List[str]:
        from testing_support.races import published_version, race_problems
        from testing_support.stages import error_lines

        base = {EXIT_OK} if good else {EXIT_BAD_DATA}
        problems = []
        for number, run in enumerate(runs):
            allowed = set(base)
            if week.run == "outage" and number == 0:
                allowed = {EXIT_STORE} | (set() if good else base)
            elif week.run == "killed" and number == 0:
                allowed |= {EXIT_CRASHED}
            elif week.run == "two-at-once" and good:
                allowed |= {EXIT_CONCURRENT}
            errors = error_lines(run.stderr)
            if run.exit not in allowed:
                problems.append(f"{run.label} exited {run.exit} (expected {sorted(allowed)}): "
                                f"{errors or run.stderr[-800:]}")
            elif run.exit == EXIT_OK and errors:
                problems.append(f"{run.label} exited 0 with errors: {errors}")
            elif run.exit not in (EXIT_OK, EXIT_CRASHED) and len(errors) != 1:
                problems.append(f"{run.label} exited {run.exit} without one ERROR line: {errors}")
            version = published_version(run.stderr)
            if version is not None:
                self.report.published += 1
                self.published_versions.append(version)
            elif run.exit == EXIT_OK:
                self.report.kept += 1
        if week.run == "two-at-once" and good:
            problems += race_problems(self.store, [{"exit": r.exit, "stderr": r.stderr}
                                                   for r in runs], pointer_before, complete=False)
        return problems

    def _check_store(
        self, before: Dict[str, str], good: bool, pointer_before: Optional[str]
    ) -> List[str]:
        from testing_support.races import model_problems

        problems = self._remember_objects()
        after = self._models()
        try:
            loaded = load_latest(self.store)
        except ModelUnavailable as exc:
            return problems + [f"the pointer names no intact model: {exc}"]
        problems += model_problems(self.store, complete=False)
        if not good:
            if after != before:
                changed = sorted(k for k in set(after) | set(before)
                                 if after.get(k) != before.get(k))
                problems.append(f"a rejected tranche changed model objects: {changed}")
        elif loaded.version != pointer_before:
            if f"{MODELS_PREFIX}{loaded.version}/model.json" in before:
                problems.append(f"the pointer moved to {loaded.version}, not a new model")
            trained_on = loaded.metadata.tranche.key
            if trained_on != self.newest_key:
                problems.append(f"published {loaded.version} trained on {trained_on}, "
                                f"not the newest tranche {self.newest_key}")
        return problems

    def _check_replicas(self, since: float) -> List[str]:
        """Both replicas alive and serving the pointer's version within refresh + 2 s of it."""
        bound = self.refresh + 2.0
        target = load_latest_version(self.store)
        self.watch.wait_for_pointer(target)
        deadline = max(self.watch.last_change() + bound, time.monotonic())
        while True:
            served = [replica_version(s.port) for s in self.replicas]
            if all(v == target for v in served) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        problems = [f"replica {s.port} exited {s.process.returncode}" for s in self.replicas
                    if s.process.poll() is not None]
        if any(v != target for v in served):
            problems.append(f"replicas serve {served}, not the pointer's {target}, "
                            f"{bound:g} s after it moved")
        stale = self.watch.longest_stale(since)
        if stale > bound:
            problems.append(f"a replica served a superseded model for {stale:.2f} s")
        return problems


def _credentials(env: Dict[str, str]) -> Dict[str, str]:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}


def _direct_store(url: str, endpoint: str) -> Store:
    """The store on the S3 server itself (not through a proxy), for the checks."""
    import boto3

    from testing_support.stages import AWS_TEST_ENV

    store = open_store(url)
    store._s3 = boto3.client("s3", endpoint_url=endpoint,  # type: ignore[attr-defined]
                             **_credentials(AWS_TEST_ENV))
    return store


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``loadgen``: the load generator process."""
    parser = argparse.ArgumentParser(prog="fridays")
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("loadgen")
    load.add_argument("--port", type=int, action="append", required=True)
    load.add_argument("--out", required=True)
    load.add_argument("--pause", type=float, default=0.005)
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--core", default=",".join(CORE_CODES),
                      help="comma-separated parts every model knows")
    load.add_argument("--tail", default="", help="comma-separated parts a model may not know")
    args = parser.parse_args(argv)
    loadgen_main(args.port, args.out, args.pause, args.seed, args.core.split(","),
                 [code for code in args.tail.split(",") if code])


if __name__ == "__main__":
    main()
