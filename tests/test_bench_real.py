"""benchmarks/bench_real.py on a tiny store made here: Fridays counted, peers right, coverage."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import List

import numpy as np
import pandas as pd
import pytest

from pipeline.simulate import DEFAULT_PRODUCT_CODES, simulate_tranche
from testing_support.stages import PYTHON, REPO_ROOT, stage_env

DAYS = ("2026-10-30", "2026-11-06", "2026-11-13", "2026-11-20")
NEW_PART = "SKU-NEW"


def write_store(store: Path, rows: int) -> List[pd.DataFrame]:
    """Four weekly tranches of the five-part world; the last one adds a part never seen."""
    (store / "datasets").mkdir(parents=True)
    frames = []
    for week, day in enumerate(DAYS):
        codes = DEFAULT_PRODUCT_CODES + ((NEW_PART,) if week == len(DAYS) - 1 else ())
        tranche = simulate_tranche(rows, seed=week, shape="saturating", product_codes=codes,
                                   week=week)
        path = store / "datasets" / f"time_to_dispatch_{day}T23:00:00.csv"
        path.write_bytes(tranche.to_csv())
        frames.append(pd.read_csv(path))
    return frames


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory):
    """bench_real on a folder of two stores, one chosen, scoring Fridays 2 and 3."""
    root = tmp_path_factory.mktemp("stores")
    weeks = write_store(root / "shop", 150)
    write_store(root / "other", 120)
    out = root / "figures.json"
    done = subprocess.run(
        [PYTHON, "benchmarks/bench_real.py", str(root), "--stores", "shop", "--weeks-from", "2",
         "--train-arg=--no-report", "--json", str(out)],
        cwd=REPO_ROOT, env=stage_env({}), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(out.read_text())["stores"], weeks


def test_it_plays_the_fridays_asked_for_and_counts_live_models(played) -> None:
    stdout, stores, _ = played
    assert list(stores) == ["shop"]
    shop = stores["shop"]
    fridays = [line for line in stdout.splitlines() if line.startswith("shop Friday")]
    assert [line.split()[2] for line in fridays] == ["2", "3"]
    assert not [line for line in stdout.splitlines() if line.startswith("other")]
    live = sum(week["live_model"] is not None for week in shop["weeks"])
    assert live == sum("live none" not in line for line in fridays)
    assert f"Fridays with a live model: {live} of 2" in stdout
    assert [week["exit_status"] for week in shop["weeks"]] == [
        int(line.split("exit ")[1].split()[0]) for line in fridays
    ]


def test_the_peers_are_trained_on_the_window_and_scored_on_the_next_week(played) -> None:
    stdout, stores, weeks = played
    for name in ("last week's median", "window per-code median", "reference tree"):
        assert name in stdout
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        assert "LightGBM peers skipped: lightgbm is not installed" in stdout
    else:
        assert "LightGBM L2" in stdout and "LightGBM L1" in stdout
    for friday, week in zip((2, 3), stores["shop"]["weeks"]):
        last, nxt = weeks[friday - 1], weeks[friday]
        window = pd.concat(weeks[:friday])  # the preloaded tranche counts: it is in the window
        per_code = nxt["product_code"].map(window.groupby("product_code")["hours_to_dispatch"]
                                           .median()).fillna(window["hours_to_dispatch"].median())
        hours = nxt["hours_to_dispatch"].to_numpy()
        assert week["orders"] == len(nxt)
        assert week["mae"]["last week's median"] == pytest.approx(
            np.mean(np.abs(hours - last["hours_to_dispatch"].median())))
        assert week["mae"]["window per-code median"] == pytest.approx(
            np.mean(np.abs(hours - per_code.to_numpy())))


def test_coverage_is_counted_by_basis_over_the_weeks_with_a_live_model(played) -> None:
    stdout, stores, _ = played
    shop = stores["shop"]
    live_orders = sum(week["orders"] for week in shop["weeks"] if week["live_model"])
    if not live_orders:
        assert "no live model on any Friday" in stdout
        return
    coverage = shop["coverage"]
    assert coverage["all"]["rows"] == live_orders == shop["orders_scored"]
    assert sum(c["rows"] for basis, c in coverage.items() if basis != "all") == live_orders
    assert "p90 coverage: " in stdout
    assert "model / best peer" in stdout
