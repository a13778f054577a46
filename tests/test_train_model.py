"""The train_model stage end to end: local and S3 stores, every bad tranche, the CLI forms."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytest

from pipeline import artefacts
from pipeline.model_format import Curve, DispatchModel
from pipeline.simulate import (
    DEFAULT_PRODUCT_CODES, expected_hours, noise_floor_mae, simulate_tranche, tranche_key,
    write_tranches,
)
from pipeline.store import ConcurrentUpdate, Store, open_store
from pipeline.train_model import main
from pipeline.training import run as run_module
from pipeline.training.run import (
    EXIT_BAD_DATA, EXIT_CONCURRENT, EXIT_GATES, EXIT_NO_TRANCHE, EXIT_STORE, fit, split_rows,
)
from testing_support.models import publish_model
from testing_support.stages import PIPELINE_DIR, PYTHON, REPO_ROOT, free_port, stage_env
from testing_support.stores import is_run_record

OLD_WEEK = "2026-11-13T23:00:00"
NEW_WEEK = "2026-11-20T23:00:00"
UNTIL = datetime(2026, 11, 21, tzinfo=timezone.utc)
HEADER = b"hours_to_dispatch,orders_placed,product_code\n"


def put(url: str, when: str, data: bytes) -> str:
    key = tranche_key(when)
    open_store(url).write_bytes(key, data)
    return key


def snapshot(url: str) -> Dict[str, bytes]:
    """Every object in the store (hidden files and the whole bucket included), byte for byte,
    but the runs' records (reports, realised accuracy), which every run leaves."""
    return {k: v for k, v in every_object(url).items() if not is_run_record(k)}


def every_object(url: str) -> Dict[str, bytes]:
    """Every object in the store (hidden files and the whole bucket included), byte for byte."""
    if url.startswith("s3://"):
        import boto3

        client = boto3.client("s3")
        bucket = url[len("s3://"):].split("/")[0]
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    root = Path(url)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def errors(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def messages(caplog: pytest.LogCaptureFixture, level: int) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def stage(url: str, *options: str) -> int:
    return main([url, *options])


@pytest.fixture(scope="module")
def published_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local store holding last week's tranche and a model published from it."""
    root = tmp_path_factory.mktemp("template") / "store"
    root.mkdir()
    put(str(root), OLD_WEEK, simulate_tranche(1000, seed=11).to_csv())
    assert stage(str(root)) == 0
    return root


@pytest.fixture
def published(published_template: Path, tmp_path: Path) -> str:
    """A fresh copy of the published template store."""
    root = tmp_path / "published"
    shutil.copytree(published_template, root)
    return str(root)


def pointed_version(url: str) -> str:
    found = artefacts.read_pointer(open_store(url))
    assert found is not None
    return found[0].model_version


# ---------------------------------------------------------------------------- pure steps


def test_split_keeps_a_lone_rare_row_in_training_and_survives_many_codes() -> None:
    codes = np.repeat(np.arange(3), [100, 1, 40]).astype(np.int64)
    split = split_rows(codes, 0.2, seed=0)
    assert 100 in split.train and len(split.train) + len(split.test) == 141
    many = np.arange(50).astype(np.int64)  # more codes than held-out rows: plain random
    split = split_rows(many, 0.2, seed=0)
    assert len(split.test) == 10 and len(split.train) == 40
    for tiny in ([0], [0, 0], [0, 1]):
        split = split_rows(np.asarray(tiny, dtype=np.int64), 0.2, seed=0)
        assert sorted(np.concatenate([split.train, split.test])) == list(range(len(tiny)))


def test_split_is_seeded_disjoint_complete_and_stratified() -> None:
    codes = np.repeat(np.arange(3), [100, 50, 7]).astype(np.int64)
    split = split_rows(codes, 0.2, seed=4)
    again = split_rows(codes, 0.2, seed=4)
    np.testing.assert_array_equal(split.test, again.test)
    assert not set(split.train) & set(split.test)
    assert sorted(np.concatenate([split.train, split.test])) == list(range(len(codes)))
    assert len(split.test) == 32  # ceil(0.2 * 157), as train_test_split rounds
    held = np.bincount(codes[split.test], minlength=3)
    assert np.all(np.abs(held - 0.2 * np.array([100, 50, 7])) <= 1.0)
    assert not np.array_equal(split_rows(codes, 0.2, seed=5).test, split.test)


# ------------------------------------------------------------------------ publishing


def test_publishes_a_verified_model_with_complete_metadata(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_COMMIT_HASH", "abc1234")
    store = open_store(store_url)
    keys = write_tranches(store, rows=1000, weeks=2, seed=3, shape="linear", until=UNTIL)
    assert stage(store_url) == 0
    loaded = artefacts.load_latest(store)
    meta = loaded.metadata
    assert meta.unknown_fields() == [], "training writes only fields the schema names"
    assert meta.model_version == loaded.version
    assert meta.tranche.key == keys[-1]
    assert meta.tranche.sha256 == artefacts.sha256_hex(store.read_bytes(keys[-1]))
    assert meta.rows.total == 1000
    # Last week's tranche is in the window: the scored model was fitted on it alone and judged
    # on this whole week, the week that came after it.
    assert meta.rows.train == 0 and meta.rows.test == 1000
    assert meta.held_out is not None and meta.held_out.startswith("the newest tranche, whole")
    assert sum(meta.rows.per_product_code.values()) == 1000
    assert meta.product_codes == list(DEFAULT_PRODUCT_CODES)
    assert set(meta.fits) == set(DEFAULT_PRODUCT_CODES)
    held_out = meta.metrics.held_out
    assert held_out.overall.rows == 1000 and (held_out.overall.r2 or 0.0) > 0.8
    assert set(held_out.per_product_code) == set(DEFAULT_PRODUCT_CODES)
    gates = {g.gate: g.outcome for g in meta.gates}
    assert gates == {
        "coverage_p90": "pass", "mae_vs_code_median": "pass", "mae_vs_global_median": "pass",
        "monotone": "pass", "non_negative": "pass",
        "bounded": "pass", "champion": "pass", "refit_monotone": "pass",
        "refit_non_negative": "pass", "refit_bounded": "pass", "refit_mae": "pass",
        "refit_estimates": "pass", "refit_coverage_p90": "pass",
    }
    baselines = held_out.baselines
    assert set(baselines) == {"code_median", "global_median"}
    assert (held_out.overall.mae or 0.0) < (baselines["code_median"].overall.mae or 0.0) < \
        (baselines["global_median"].overall.mae or 0.0)
    assert baselines["code_median"].overall.rows == 1000
    assert meta.quarantine is not None and meta.quarantine.to_data() == {
        "max_bad_row_share": 0.01, "rows_set_aside": 0, "tranches": []}
    assert [h.rows_set_aside for h in meta.history] == [0, 0]
    coverage = [held_out.overall.coverage_p90] + [
        m.coverage_p90 for _, m in held_out.per_product_code.items()]
    assert 0.8 < (coverage[0] or 0.0) < 0.97
    assert all(c is not None and 0.0 <= c <= 1.0 for c in coverage)
    model = loaded.model
    assert set(model.bounds) == set(model.ranges) == set(DEFAULT_PRODUCT_CODES)
    fits = [meta.fits.get(code) for code in meta.rows.per_product_code]
    assert all(f is not None and (f.bound_quantile or 0.0) > 0 for f in fits)
    assert all(low >= 0 and high > low for low, high in model.ranges.values())
    assert meta.drift.previous_tranche == keys[0]
    assert set(meta.drift.psi) == {"orders_placed", "hours_to_dispatch", "product_code"}
    assert meta.git_commit == "abc1234"
    assert {"python", "numpy", "pandas", "pandera", "scikit-learn", "scipy"} <= set(
        meta.library_versions
    )
    assert (meta.training_seconds or 0.0) > 0
    assert meta.published_model == "refit on all rows"
    assert meta.options.thresholds.coverage_min == 0.85
    assert meta.options.to_data()["champion_tolerance"] == 0.05
    assert meta.created is not None and meta.created.tzinfo is not None
    assert meta.previous_model is None and meta.records_previous_model
    assert meta.report is not None and meta.report.json_key is not None
    assert store.read_bytes(artefacts.metadata_key(loaded.version)) == meta.to_json()


def test_the_next_run_meets_the_champion_and_replaces_it(
    published: str, caplog: pytest.LogCaptureFixture
) -> None:
    champion = pointed_version(published)
    put(published, NEW_WEEK, simulate_tranche(1000, seed=12).to_csv())
    with caplog.at_level(logging.INFO):
        assert stage(published) == 0
    assert pointed_version(published) != champion
    decision = [g for g in artefacts.load_latest(open_store(published)).metadata.gates
                if g.gate == "champion"][0]
    assert champion in (decision.detail or "") and decision.outcome == "pass"


def true_model(shape: str) -> DispatchModel:
    knots = np.arange(0.0, 400.0)
    return DispatchModel({
        code: Curve(tuple(knots), tuple(expected_hours(i, knots, shape)))
        for i, code in enumerate(DEFAULT_PRODUCT_CODES)
    })


def test_a_better_champion_is_deliberately_kept(
    local_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    champion = publish_model(local_url, true_model("saturating")).model_version
    tranche = simulate_tranche(1000, seed=21, shape="saturating", noise_sd=0.01)
    put(local_url, NEW_WEEK, tranche.to_csv())
    before = snapshot(local_url)
    with caplog.at_level(logging.INFO):
        assert stage(local_url) == 0  # the challenger is ~30% worse: beyond the 5% tolerance
    assert snapshot(local_url) == before
    assert any("deliberately kept" in m and champion in m for m in messages(caplog, logging.INFO))
    assert errors(caplog) == []


def test_an_unreadable_champion_is_replaced_with_a_warning(
    published: str, caplog: pytest.LogCaptureFixture
) -> None:
    pointer = artefacts.read_pointer(open_store(published))
    assert pointer is not None
    (Path(published) / pointer[0].model_key).write_bytes(b"{tampered")
    put(published, NEW_WEEK, simulate_tranche(1000, seed=13).to_csv())
    with caplog.at_level(logging.INFO):
        assert stage(published) == 0
    assert pointed_version(published) != pointer[0].model_version
    assert any("cannot be read" in m for m in messages(caplog, logging.WARNING))


def test_new_codes_are_learned_and_rare_ones_skipped_and_recorded(
    published: str, caplog: pytest.LogCaptureFixture
) -> None:
    put(published, NEW_WEEK, with_new_and_rare_codes(14))
    with caplog.at_level(logging.INFO):
        assert stage(published, "--history-weeks", "0") == 0
    meta = artefacts.load_latest(open_store(published)).metadata
    assert "NEW001" in meta.product_codes and "RARE01" not in meta.product_codes
    assert meta.rows.skipped_product_codes == {"RARE01": 10}
    assert {b: p.parts for b, p in meta.bases.items()} == {"product": 6, "pooled": 0}
    assert any("RARE01" in m for m in messages(caplog, logging.WARNING))


def with_new_and_rare_codes(seed: int) -> bytes:
    """A five-part tranche plus a new part with 200 rows and a rare one with 10."""
    base = simulate_tranche(1000, seed=seed).to_csv()
    extra = "".join(f"{2 + i * 0.01:.2f},{90 + i},NEW001\n" for i in range(200))
    rare = "".join(f"3.0,{100 + i},RARE01\n" for i in range(10))
    return base + extra.encode() + rare.encode()


def test_with_history_a_rare_code_gets_a_pooled_curve(published: str) -> None:
    put(published, NEW_WEEK, with_new_and_rare_codes(14))
    assert stage(published) == 0
    loaded = artefacts.load_latest(open_store(published))
    meta, model = loaded.metadata, loaded.model
    assert meta.unknown_fields() == []
    assert "RARE01" in meta.product_codes and meta.rows.skipped_product_codes == {}
    assert model.bases["RARE01"] == "pooled" and model.bases["NEW001"] == "product"
    assert {b: p.parts for b, p in meta.bases.items()} == {"product": 6, "pooled": 1}
    by_basis = meta.metrics.held_out.by_basis
    assert set(by_basis) == {"product", "pooled", "catalogue"}
    # NEW001 and RARE01 are new this week: the scored model answered them from its catalogue.
    assert by_basis["catalogue"].rows == 210
    for peer in meta.metrics.held_out.baselines.values():
        assert set(peer.by_basis) == {"product", "pooled", "catalogue"}
    assert meta.pooling is not None and meta.pooling.parts == {"product": 6, "pooled": 1}
    assert model.catalogue is not None
    assert [h.newest for h in meta.history] == [True, False]
    assert meta.history[1].key == tranche_key(OLD_WEEK)
    assert meta.report is not None and meta.report.json_key is not None
    report = json.loads(open_store(published).read_bytes(meta.report.json_key))
    assert "tail" in report["figures"]
    assert report["history"] == [h.to_data() for h in meta.history]
    assert meta.report.html is not None
    page = open_store(published).read_bytes(meta.report.html).decode()
    assert "<th>MAE of window&#x27;s per-code median (h)</th>" in page
    assert report["bases"] == {"product": 6, "pooled": 1}


def test_a_broken_older_tranche_is_left_out_with_one_warning_and_the_window_holds(
    local_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    broken = put(local_url, "2026-11-06T23:00:00", HEADER + b"ten,x,SKU001\n")
    good = put(local_url, OLD_WEEK, simulate_tranche(500, seed=31).to_csv())
    put(local_url, "2026-08-14T23:00:00", simulate_tranche(500, seed=32).to_csv())
    newest = put(local_url, NEW_WEEK, with_new_and_rare_codes(33))
    with caplog.at_level(logging.INFO):
        assert stage(local_url, "--history-weeks", "13", "--no-report") == 0
    [warning] = [m for m in messages(caplog, logging.WARNING) if "older tranche" in m]
    assert broken in warning and "left out" in warning
    meta = artefacts.load_latest(open_store(local_url)).metadata
    assert [h.key for h in meta.history] == [newest, good]
    assert meta.history[1].rows == 500 and len(meta.history[1].sha256 or "") == 64
    assert [h.key for h in meta.history_left_out] == [broken]


def test_log_lines_stay_short_however_many_product_codes(
    local_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """3,000 rare codes: lines that once listed every code name ten and count the rest."""
    base = simulate_tranche(1000, seed=21).to_csv()
    rare = "".join(f"3.0,{100 + i % 7},RARE-PART-{i // 2:05d}\n" for i in range(6000))
    put(local_url, NEW_WEEK, base + rare.encode())
    with caplog.at_level(logging.INFO):
        assert stage(local_url, "--no-report", "--history-weeks", "0") == 0
    meta = artefacts.load_latest(open_store(local_url)).metadata
    assert len(meta.rows.skipped_product_codes) == 3000, "the metadata keeps every code"
    lines = [r.getMessage() for r in caplog.records]
    assert max(len(line) for line in lines) < 2000
    [skipped] = [m for m in messages(caplog, logging.WARNING) if "not learned" in m]
    assert "3,000 product code(s)" in skipped and "and 2,990 more" in skipped
    [contract] = [m for m in lines if "meets the data contract" in m]
    assert "3,005 product codes" in contract and "busiest SKU" in contract


def test_no_refit_publishes_the_model_fitted_on_the_training_rows(local_url: str) -> None:
    put(local_url, NEW_WEEK, simulate_tranche(1000, seed=15).to_csv())
    assert stage(local_url, "--no-refit") == 0
    meta = artefacts.load_latest(open_store(local_url)).metadata
    assert meta.published_model == "fitted on the training rows"
    assert not any((g.gate or "").startswith("refit_") for g in meta.gates)


def scaled(model: DispatchModel, factor: float) -> DispatchModel:
    """The same model answering ``factor`` times its estimates and bounds."""
    def times(curve: Curve) -> Curve:
        return Curve(curve.knots, tuple(factor * v for v in curve.values))

    catalogue = None if model.catalogue is None else model.catalogue._replace(
        curve=times(model.catalogue.curve), bound=times(model.catalogue.bound))
    return replace(model, curves={c: times(k) for c, k in model.curves.items()},
                   bounds={c: times(k) for c, k in model.bounds.items()}, catalogue=catalogue)


def test_a_refit_that_strays_from_the_scored_model_is_not_published_the_scored_one_is(
    local_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(local_url, OLD_WEEK, simulate_tranche(600, seed=17).to_csv())
    put(local_url, NEW_WEEK, simulate_tranche(600, seed=18).to_csv())
    fitted: List[Any] = []

    def fit_then_stray(*args: Any, **kwargs: Any) -> Any:
        found = fit(*args, **kwargs)
        if fitted:  # the second fit is the refit on all rows
            found = replace(found, model=scaled(found.model, 3.0))
        fitted.append(found)
        return found

    monkeypatch.setattr(run_module, "fit", fit_then_stray)
    assert stage(local_url, "--no-report") == 0
    published = artefacts.load_latest(open_store(local_url))
    assert len(fitted) == 2
    assert published.model.to_json() == fitted[0].model.to_json()
    meta = published.metadata
    assert meta.published_model == (
        "fitted on the training rows (the refit failed its checks against it)")
    outcomes = {g.gate: g.outcome for g in meta.gates}
    assert outcomes["refit_estimates"] == "warn" and outcomes["refit_mae"] == "warn"


def test_without_a_stray_the_refit_is_published_and_its_checks_pass(local_url: str) -> None:
    put(local_url, OLD_WEEK, simulate_tranche(600, seed=17).to_csv())
    put(local_url, NEW_WEEK, simulate_tranche(600, seed=18).to_csv())
    assert stage(local_url, "--no-report") == 0
    meta = artefacts.load_latest(open_store(local_url)).metadata
    assert meta.published_model == "refit on all rows"
    refit = {g.gate: g.outcome for g in meta.gates if (g.gate or "").startswith("refit_")}
    assert {"refit_mae", "refit_estimates", "refit_coverage_p90"} <= set(refit)
    assert set(refit.values()) == {"pass"}


def one_or_two_rows_a_part(codes: List[int], seed: int) -> bytes:
    """A week of a long tail: each listed part ordered once (listed twice: twice)."""
    rng = np.random.default_rng(seed)
    lines = ["hours_to_dispatch,orders_placed,product_code"] + [
        f"{44.0 * np.exp(rng.normal(0.0, 0.8)):.3f},{rng.integers(10, 500)},P{c:04d}"
        for c in codes]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("weeks", [
    [list(range(60))],  # a store's first tranche, every part ordered once
    [list(range(50)) * 2, list(range(30, 90))],  # 40 parts new this week, 20 seen before
])
def test_a_week_whose_parts_have_one_or_two_rows_is_split_scored_and_published(
    local_url: str, weeks: List[List[int]]
) -> None:
    for when, codes in zip((OLD_WEEK, NEW_WEEK)[-len(weeks):], weeks):
        put(local_url, when, one_or_two_rows_a_part(codes, seed=len(codes)))
    assert stage(local_url, "--no-report") == 0
    meta = artefacts.load_latest(open_store(local_url)).metadata
    assert meta.tranche.key == tranche_key(NEW_WEEK)
    by_basis = meta.metrics.held_out.by_basis
    if len(weeks) == 1:  # a seeded share held out, answered from the catalogue curve
        assert meta.rows.test == by_basis["catalogue"].rows == 12
    else:  # the newest week whole: seen parts from their curves, new ones from the catalogue
        assert meta.rows.test == 60
        assert meta.held_out is not None and meta.held_out.startswith("the newest tranche")
        assert by_basis["pooled"].rows == 20 and by_basis["catalogue"].rows == 40


# ------------------------------------------------------------ every bad tranche, one by one


def rows(n: int = 200, seed: int = 16) -> bytes:
    return simulate_tranche(n, seed=seed).to_csv()


BAD_ROWS = 3  # of 200 good rows: beyond the tolerated share (2 rows)
BAD_LINES: Dict[str, bytes] = {  # each line breaks the rule it is named after
    "hours_to_dispatch_not_a_number": b"soon,3,SKU001\n",
    "orders_placed_not_a_number": b"1.0,many,SKU001\n",
    "hours_to_dispatch_missing": b",3,SKU001\n",
    "orders_placed_missing": b"1.0,,SKU001\n",
    "product_code_missing": b"1.0,3,\n",
    "orders_placed_negative": b"1.0,-3,SKU001\n",
    "orders_placed_not_whole": b"1.0,3.5,SKU001\n",
    "orders_placed_not_finite": b"1.0,inf,SKU001\n",
    "hours_to_dispatch_negative": b"-1.0,3,SKU001\n",
    "hours_to_dispatch_not_finite": b"nan,3,SKU001\n",
    "hours_to_dispatch_above_max": b"8760.5,3,SKU001\n",
    "extra_fields": b"1.0,3,SKU,001\n",
}
BAD_TRANCHES: Dict[str, Callable[[], bytes]] = {
    "file_empty": lambda: b"",
    "no_data_rows": lambda: HEADER,
    "file_binary": lambda: b"\x1f\x8b\x08\x00" + bytes(range(256)),
    "file_not_utf8": lambda: rows() + b"1.0,3,SKU\xff\n",
    "wrong_delimiter": lambda: rows().replace(b",", b";"),
    "missing_columns": lambda: rows().replace(b"orders_placed", b"orders", 1),
    "duplicate_columns": lambda: rows().replace(b"product_code", b"orders_placed", 1),
    **{rule: (lambda line=line: rows() + line * BAD_ROWS) for rule, line in BAD_LINES.items()},
    "no_valid_rows": lambda: HEADER + b"-1.0,3,SKU001\n",
    "unreadable_csv": lambda: rows() + b'"1.0,3,SKU001\n',
}


@pytest.mark.parametrize("rule", sorted(BAD_TRANCHES))
def test_each_bad_tranche_is_rejected_and_nothing_changes(
    rule: str, published: str, caplog: pytest.LogCaptureFixture
) -> None:
    champion = pointed_version(published)
    key = put(published, NEW_WEEK, BAD_TRANCHES[rule]())
    before = snapshot(published)
    assert stage(published) == EXIT_BAD_DATA
    assert snapshot(published) == before
    assert pointed_version(published) == champion
    [error] = errors(caplog)
    assert rule in error and key in error and "data contract" in error


def test_a_bad_tranche_on_s3_changes_nothing(s3_url: str, caplog: pytest.LogCaptureFixture) -> None:
    put(s3_url, OLD_WEEK, rows(1000))
    assert stage(s3_url) == 0
    put(s3_url, NEW_WEEK, rows() + BAD_LINES["orders_placed_negative"] * BAD_ROWS)
    before = snapshot(s3_url)
    caplog.clear()
    assert stage(s3_url) == EXIT_BAD_DATA
    assert snapshot(s3_url) == before
    [error] = errors(caplog)
    assert "orders_placed_negative" in error and s3_url in error


def test_garbage_labels_fail_an_absolute_r2_minimum(
    published: str, caplog: pytest.LogCaptureFixture
) -> None:
    tranche = simulate_tranche(1000, seed=17)
    shuffled = np.random.default_rng(0).permutation(tranche.hours_to_dispatch)
    lines = [f"{h:.4f},{o},{c}" for h, o, c in
             zip(shuffled, tranche.orders_placed, tranche.product_code)]
    put(published, NEW_WEEK, HEADER + ("\n".join(lines) + "\n").encode())
    before = snapshot(published)
    assert stage(published, "--r2-min", "0.5") == EXIT_GATES
    assert snapshot(published) == before
    [error] = errors(caplog)
    assert "gates" in error and "R²" in error


def test_a_bound_that_covers_too_few_held_out_dispatches_fails_the_gates(
    published: str, caplog: pytest.LogCaptureFixture
) -> None:
    put(published, NEW_WEEK, simulate_tranche(1000, seed=18).to_csv())
    before = snapshot(published)
    assert stage(published, "--coverage-min", "0.99") == EXIT_GATES
    assert snapshot(published) == before
    [error] = errors(caplog)
    assert "coverage_p90" in error and "below the minimum 0.99" in error
    assert any("held-out coverage of the p90 bound" in m for m in messages(caplog, logging.INFO))


# ---------------------------------------------- rows set aside, the window's minimum rows


def with_bad_rows(rows_total: int, bad: List[bytes], seed: int = 41) -> bytes:
    """A simulated tranche of ``rows_total`` data rows, the given bad lines among them."""
    good = simulate_tranche(rows_total - len(bad), seed=seed).to_csv().splitlines(keepends=True)
    return b"".join(good[:500] + bad + good[500:])


def test_a_1001_row_tranche_with_one_bad_row_trains_and_keeps_the_row_in_quarantine(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = put(store_url, NEW_WEEK, with_bad_rows(1001, [b"-3.5,42,SKU002\n"]))
    with caplog.at_level(logging.INFO):
        assert stage(store_url) == 0
    store = open_store(store_url)
    where = "quarantine/time_to_dispatch_2026-11-20T23:00:00.csv"
    assert artefacts.quarantine_key(key) == where
    assert store.read_bytes(where).decode().splitlines() == [
        "line,rule,hours_to_dispatch,orders_placed,product_code",
        "501,hours_to_dispatch_negative,-3.5,42,SKU002"]
    meta = artefacts.load_latest(store).metadata
    assert meta.unknown_fields() == []
    assert meta.rows.total == 1000
    assert meta.quarantine is not None and meta.quarantine.to_data() == {
        "max_bad_row_share": 0.01, "rows_set_aside": 1, "tranches": [{
            "key": key, "quarantine": where, "rows_read": 1001, "rows_set_aside": 1,
            "rules": {"hours_to_dispatch_negative": 1}}]}
    assert meta.history[0].rows_set_aside == 1
    assert meta.report is not None and meta.report.json_key and meta.report.html
    report = json.loads(store.read_bytes(meta.report.json_key))
    assert report["quarantine"] == meta.quarantine.to_data()
    page = store.read_bytes(meta.report.html).decode()
    assert "Rows set aside" in page and where in page
    [warning] = [m for m in messages(caplog, logging.WARNING) if "set aside" in m]
    assert "1 of 1001 data rows set aside" in warning and "line 501" in warning
    assert errors(caplog) == []


def test_five_percent_bad_rows_refuse_the_tranche_and_set_nothing_aside(
    published: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [b"-1.0,3,SKU001\n"] * 40 + [b"1.0,ten,SKU002\n"] * 10
    key = put(published, NEW_WEEK, with_bad_rows(1000, bad))
    before = snapshot(published)
    assert stage(published) == EXIT_BAD_DATA
    assert snapshot(published) == before
    [error] = errors(caplog)
    assert key in error and "3 rules broken" in error
    for words in ("orders_placed_not_a_number", "hours_to_dispatch_negative",
                  "too_many_bad_rows: 50 of the 1000 data rows break a row rule; at most 10"):
        assert words in error


def test_an_older_tranche_with_one_bad_row_still_counts(
    local_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A small week: one row over --max-hours is 1 of 47 rows (2%), yet one row is tolerated."""
    older = put(local_url, OLD_WEEK, simulate_tranche(46, seed=42).to_csv() + b"9000,3,SKU001\n")
    newest = put(local_url, NEW_WEEK, simulate_tranche(1000, seed=43).to_csv())
    with caplog.at_level(logging.INFO):
        assert stage(local_url, "--no-report") == 0
    meta = artefacts.load_latest(open_store(local_url)).metadata
    assert [(h.key, h.rows, h.rows_set_aside) for h in meta.history] == [
        (newest, 1000, 0), (older, 46, 1)]
    assert meta.history_left_out == []
    assert meta.quarantine is not None
    assert meta.quarantine.tranches[0].rules == {"hours_to_dispatch_above_max": 1}
    assert open_store(local_url).read_bytes(artefacts.quarantine_key(older)).decode().endswith(
        "48,hours_to_dispatch_above_max,9000,3,SKU001\n")
    assert not any("left out" in m for m in messages(caplog, logging.WARNING))


def test_a_30_row_week_trains_with_its_history(local_url: str) -> None:
    put(local_url, "2026-11-06T23:00:00", simulate_tranche(40, seed=44).to_csv())
    put(local_url, OLD_WEEK, simulate_tranche(40, seed=45).to_csv())
    newest = put(local_url, NEW_WEEK, simulate_tranche(30, seed=46).to_csv())
    assert stage(local_url, "--no-report") == 0
    meta = artefacts.load_latest(open_store(local_url)).metadata
    assert meta.tranche.key == newest and meta.rows.total == 30
    assert [h.rows for h in meta.history] == [30, 40, 40]


def test_too_few_rows_in_the_window_is_refused_saying_what_is_needed(
    local_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    put(local_url, OLD_WEEK, simulate_tranche(40, seed=47).to_csv())
    key = put(local_url, NEW_WEEK, simulate_tranche(30, seed=48).to_csv())
    before = snapshot(local_url)
    assert stage(local_url, "--min-rows", "100") == EXIT_BAD_DATA
    assert snapshot(local_url) == before
    [error] = errors(caplog)
    assert key in error and "too_few_rows" in error
    assert ("the newest tranche has 30 valid rows and the 1 older tranche(s) of the history "
            "window (--history-weeks 13) 40 more: 70 in all; at least 100 valid rows are needed "
            "(--min-rows)") in error


def test_an_empty_newest_tranche_is_refused_even_with_a_history(
    published: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = put(published, NEW_WEEK, HEADER)
    assert stage(published) == EXIT_BAD_DATA
    [error] = errors(caplog)
    assert key in error and "no data rows" in error
    assert "a tranche needs at least one valid row of orders under its header" in error


def test_a_model_that_loses_to_the_per_code_median_is_refused(
    published: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage gates whatever the estimator fits: a model answering three times its curves
    clearly loses to the window's per-code median on the same held-out rows."""
    import pipeline.training.run as stage_module

    fitted = stage_module.fit

    def tripled(*args: Any, **kwargs: Any) -> Any:
        result = fitted(*args, **kwargs)
        model = result.model
        curves = {code: Curve(c.knots, tuple(3.0 * v for v in c.values))
                  for code, c in model.curves.items()}
        bounds = {code: Curve(b.knots, tuple(3.0 * v for v in b.values))
                  for code, b in model.bounds.items()}
        return replace(result, model=replace(model, curves=curves, bounds=bounds))

    monkeypatch.setattr(stage_module, "fit", tripled)
    put(published, NEW_WEEK, simulate_tranche(1000, seed=49).to_csv())
    before = snapshot(published)
    assert stage(published) == EXIT_GATES
    assert snapshot(published) == before
    [error] = errors(caplog)
    assert "mae_vs_code_median" in error and "less accurate beyond sampling error" in error


# ------------------------------------------------------------------ other expected failures


def test_no_tranche_at_all(local_url: str, caplog: pytest.LogCaptureFixture) -> None:
    open_store(local_url).write_bytes("datasets/time_to_dispatch_next-week.csv", rows())
    assert stage(local_url) == EXIT_NO_TRANCHE
    [error] = errors(caplog)
    assert "no tranche" in error
    assert any("next-week" in m for m in messages(caplog, logging.WARNING))


def test_a_missing_bucket_is_a_store_error(
    aws_env: Dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    assert stage("s3://no-such-bucket-for-training/x") == EXIT_STORE
    [error] = errors(caplog)
    assert "store is unavailable" in error and "no-such-bucket-for-training" in error


def test_an_unreachable_store_fails_in_one_plain_line(aws_env: Dict[str, str]) -> None:
    env = stage_env(dict(aws_env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"))
    done = run_cli([PYTHON, "-m", "pipeline.train_model", "s3://bucket/x", "--store-attempts",
                    "1", "--store-timeout", "2"], REPO_ROOT, env)
    assert done.returncode == EXIT_STORE
    [error] = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert "store is unavailable" in error and "s3://bucket/x/datasets/" in error
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("edge_rows, learned", [(30, True), (29, False)])
def test_min_rows_per_code_boundary(edge_rows: int, learned: bool, local_url: str) -> None:
    edge = "".join(f"{2 + i * 0.01:.2f},{90 + i},EDGE\n" for i in range(edge_rows))
    put(local_url, NEW_WEEK, simulate_tranche(1000, seed=19).to_csv() + edge.encode())
    assert stage(local_url, "--min-rows-per-code", "30", "--history-weeks", "0") == 0
    meta = artefacts.load_latest(open_store(local_url)).metadata
    assert ("EDGE" in meta.product_codes) == learned
    assert meta.rows.skipped_product_codes == ({} if learned else {"EDGE": 29})
    assert stage(local_url, "--min-rows-per-code", "30", "--force", "--no-report") == 0
    model = artefacts.load_latest(open_store(local_url)).model
    assert model.bases["EDGE"] == ("product" if learned else "pooled")


class RacingStore:
    """A store where another run swings the pointer just before this run's conditional write."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def write_if_unchanged(self, key: str, data: bytes, token: Optional[str]) -> None:
        current = self.inner.read_versioned(key)
        self.inner.write_if_unchanged(key, b'{"someone": "else"}',
                                      None if current is None else current[1])
        self.inner.write_if_unchanged(key, data, token)


def test_losing_the_race_to_publish_is_reported(
    published: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pipeline.training.run as stage_module

    monkeypatch.setattr(stage_module, "open_store", lambda url, *_: RacingStore(open_store(url)))
    put(published, NEW_WEEK, simulate_tranche(1000, seed=18).to_csv())
    assert stage(published) == EXIT_CONCURRENT
    assert open_store(published).read_bytes(artefacts.POINTER_KEY) == b'{"someone": "else"}'
    [error] = errors(caplog)
    assert "another run" in error
    assert issubclass(ConcurrentUpdate, Exception)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("shape", ["linear", "saturating"])
def test_held_out_mae_is_within_three_percent_of_the_noise_floor(
    shape: str, local_url: str
) -> None:
    put(local_url, NEW_WEEK, simulate_tranche(1000, seed=31, shape=shape).to_csv())
    assert stage(local_url) == 0
    model = artefacts.load_latest(open_store(local_url)).model
    fresh = simulate_tranche(50_000, seed=32, shape=shape)
    mae = float(np.mean(np.abs(
        model.predict(list(fresh.product_code), fresh.orders_placed) - fresh.hours_to_dispatch
    )))
    floor = noise_floor_mae(fresh)
    assert mae <= 1.03 * floor, f"{shape}: MAE {mae:.4f} vs noise floor {floor:.4f}"


# ------------------------------------------------------------------------------- CLI


def run_cli(args: List[str], cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_module_form_publishes_from_the_repo_root(local_url: str) -> None:
    put(local_url, NEW_WEEK, rows(1000))
    done = run_cli([PYTHON, "-m", "pipeline.train_model", local_url], REPO_ROOT, stage_env({}))
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr and "published model" in done.stderr
    assert artefacts.load_latest(open_store(local_url)).metadata.rows.total == 1000


def test_bodywork_form_publishes_to_s3(s3_url: str, aws_env: Dict[str, str]) -> None:
    put(s3_url, NEW_WEEK, rows(1000))
    done = run_cli([PYTHON, "train_model.py", s3_url], PIPELINE_DIR, stage_env(aws_env))
    assert done.returncode == 0, done.stderr
    assert artefacts.load_latest(open_store(s3_url)).metadata.tranche.key == tranche_key(NEW_WEEK)


def test_cli_failure_is_one_error_line_without_traceback(published: str) -> None:
    put(published, NEW_WEEK, HEADER)
    done = run_cli([PYTHON, "train_model.py", published], PIPELINE_DIR, stage_env({}))
    assert done.returncode == EXIT_BAD_DATA
    error_lines = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(error_lines) == 1 and "no data rows" in error_lines[0]
    assert "Traceback" not in done.stderr


def test_help_lists_the_options_and_bad_options_are_refused(local_url: str) -> None:
    done = run_cli([PYTHON, "-m", "pipeline.train_model", "--help"], REPO_ROOT, stage_env({}))
    assert done.returncode == 0
    for option in ("--min-rows", "--max-hours", "--test-fraction", "--seed", "--r2-min",
                   "--r2-warn", "--mae-max", "--mae-warn", "--champion-tolerance",
                   "--drift-threshold", "--min-rows-per-code", "--no-refit", "--dask-scheduler",
                   "--dask-connect-timeout", "DASK_SCHEDULER_ADDRESS"):
        assert option in done.stdout
    with pytest.raises(SystemExit) as exited:
        main([local_url, "--r2-min", "0.9", "--r2-warn", "0.8"])
    assert exited.value.code == 2


def test_metadata_is_plain_json(published: str) -> None:
    pointer = artefacts.read_pointer(open_store(published))
    assert pointer is not None
    raw = open_store(published).read_bytes(pointer[0].metadata_key)
    assert json.loads(raw)["model_version"] == pointer[0].model_version
