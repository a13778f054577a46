"""The simulator's CLI: weekly tranches on Fridays at 23:00 UTC, the same for the same seed."""
from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from pipeline.artefacts import choose_tranches, tranche_timestamp
from pipeline.simulate import (
    EXIT_EXISTS, EXIT_NO_TRANCHE, catalogue_world, delivery_times, last_delivery, main, week_seed,
)
from pipeline.store import open_store
from pipeline.training.validation import validate_tranche
from testing_support.stages import PYTHON, REPO_ROOT, stage_env

UTC = timezone.utc
FRIDAY_23 = datetime(2026, 11, 20, 23, tzinfo=UTC)


@pytest.mark.parametrize(
    "now, expected",
    [
        (FRIDAY_23, FRIDAY_23),
        (FRIDAY_23 - timedelta(seconds=1), FRIDAY_23 - timedelta(days=7)),
        (FRIDAY_23 + timedelta(days=6, hours=23), FRIDAY_23),
        (datetime(2026, 11, 21, 4, tzinfo=timezone(timedelta(hours=5))), FRIDAY_23),
        (datetime(2026, 11, 21, 3, tzinfo=timezone(timedelta(hours=5))),
         FRIDAY_23 - timedelta(days=7)),
    ],
)
def test_last_delivery_is_the_latest_friday_2300_utc(now: datetime, expected: datetime) -> None:
    assert last_delivery(now) == expected


def test_deliveries_are_weekly_oldest_first() -> None:
    times = delivery_times(3, FRIDAY_23)
    assert times == [FRIDAY_23 - timedelta(days=14), FRIDAY_23 - timedelta(days=7), FRIDAY_23]
    assert len({week_seed(1, w) for w in range(10)}) == 10
    assert week_seed(1, 2) == week_seed(1, 2) != week_seed(2, 2)


def contents(url: str) -> Dict[str, bytes]:
    store = open_store(url)
    return {key: store.read_bytes(key) for key in store.list_keys("datasets/")}


def test_cli_writes_deterministic_valid_weekly_tranches(local_url: str, tmp_path) -> None:
    args = ["--rows", "300", "--weeks", "3", "--seed", "7", "--until", "2026-11-21T00:00:00Z"]
    assert main([local_url, *args]) == 0
    written = contents(local_url)
    assert [tranche_timestamp(k) for k in sorted(written)] == delivery_times(3, FRIDAY_23)
    for data in written.values():
        assert validate_tranche(data).rows == 300
    assert len(set(written.values())) == 3
    other = str(tmp_path / "again")
    assert main([other, *args]) == 0
    assert contents(other) == written
    third = str(tmp_path / "third")
    assert main([third, *args[:-2], "--seed", "8", "--until", "2026-11-21"]) == 0
    assert contents(third) != written


def test_only_if_empty_leaves_a_store_with_tranches_alone(local_url: str) -> None:
    assert main([local_url, "--rows", "100", "--until", "2026-11-21"]) == 0
    before = contents(local_url)
    assert main([local_url, "--rows", "100", "--weeks", "2", "--only-if-empty"]) == 0
    assert contents(local_url) == before


def test_saturating_shape_and_module_form_on_s3(s3_url: str, aws_env: Dict[str, str]) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "pipeline.simulate", s3_url, "--rows", "200", "--weeks", "2",
         "--shape", "saturating"],
        cwd=REPO_ROOT, env=stage_env(aws_env), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    choice = choose_tranches(open_store(s3_url).list_keys("datasets/"))
    assert choice.latest is not None and choice.previous is not None
    assert choice.latest.timestamp == last_delivery(datetime.now(UTC))


def test_bad_arguments_are_refused(local_url: str) -> None:
    for bad in (["--rows", "0"], ["--until", "last friday"], ["--shape", "cubic"]):
        with pytest.raises(SystemExit) as exited:
            main([local_url, *bad])
        assert exited.value.code == 2


def test_queue_noise_spreads_busy_days_wider_than_quiet_ones() -> None:
    import numpy as np

    from pipeline.simulate import simulate_tranche

    tranche = simulate_tranche(20_000, seed=3, noise="queue")
    residuals = tranche.hours_to_dispatch - tranche.expected_hours
    quiet = residuals[tranche.orders_placed < 60]
    busy = residuals[tranche.orders_placed > 180]
    assert np.std(busy) > 3 * np.std(quiet)
    constant = simulate_tranche(20_000, seed=3)
    residuals = constant.hours_to_dispatch - constant.expected_hours
    quiet, busy = residuals[constant.orders_placed < 60], residuals[constant.orders_placed > 180]
    assert 0.8 < np.std(busy) / np.std(quiet) < 1.25
    with pytest.raises(ValueError, match="noise must be one of"):
        simulate_tranche(10, noise="loud")


def test_the_catalogue_world_is_long_tailed_with_new_parts_and_a_known_truth(
    local_url: str,
) -> None:
    world = catalogue_world(500, 4000, 4, seed=3)
    weeks = [world.tranche(w) for w in range(4)]
    assert weeks[0].to_csv() == catalogue_world(500, 4000, 4, seed=3).tranche(0).to_csv()
    assert world.tranche(3, draw=1).to_csv() != weeks[3].to_csv()
    names, counts = np.unique(weeks[3].product_code, return_counts=True)
    top = counts[names == world.codes[0]][0]
    assert top > 10 * np.median(counts) and (counts < 30).mean() > 0.9
    first_seen = [set(np.unique(t.product_code)) for t in weeks]
    assert all(first_seen[w] - set().union(*first_seen[:w]) for w in (1, 2, 3))
    index = np.searchsorted(world.codes, weeks[2].product_code)
    assert np.array_equal(world.expected(index, weeks[2].orders_placed.astype(float), 2),
                          weeks[2].expected_hours)
    assert len(set(np.round(world.week_factor, 6))) == 4
    busy = weeks[3].orders_placed > 150
    residual = weeks[3].hours_to_dispatch - weeks[3].expected_hours
    assert residual[busy].std() > 2 * residual[weeks[3].orders_placed < 50].std()
    args = ["--catalogue", "300", "--rows", "2000", "--weeks", "3", "--until", "2026-11-21"]
    assert main([local_url, *args]) == 0
    written = contents(local_url)
    assert len(written) == 3 and all(validate_tranche(d).rows == 2000 for d in written.values())


def test_simulate_refuses_to_overwrite_a_tranche_and_names_it(local_url: str) -> None:
    args = [local_url, "--rows", "200", "--weeks", "2", "--until", "2026-11-21"]
    assert main(args) == 0
    before = contents(local_url)
    stamps = {k: (Path(local_url) / k).stat().st_mtime_ns for k in before}
    done = subprocess.run([PYTHON, "-m", "pipeline.simulate", *args, "--seed", "5"],
                          cwd=REPO_ROOT, env=stage_env({}), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == EXIT_EXISTS, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and " ERROR " in lines[0], done.stderr
    newest = str(Path(local_url) / sorted(before)[-1])
    assert newest in lines[0]
    assert contents(local_url) == before
    assert {k: (Path(local_url) / k).stat().st_mtime_ns for k in before} == stamps
    # A run that would add a week beside an existing one writes nothing at all.
    assert main([local_url, "--rows", "200", "--weeks", "3", "--until", "2026-11-28"]) == \
        EXIT_EXISTS
    assert contents(local_url) == before


def test_next_writes_the_friday_after_the_newest_tranche(local_url: str, tmp_path: Path) -> None:
    assert main([local_url, "--rows", "200", "--weeks", "3", "--seed", "4",
                 "--until", "2026-11-21"]) == 0
    assert main([local_url, "--rows", "200", "--seed", "4", "--next"]) == 0
    written = contents(local_url)
    times = [tranche_timestamp(k) for k in sorted(written)]
    assert times == delivery_times(4, FRIDAY_23 + timedelta(days=7))
    # The same week as a four-week run would have simulated.
    other = str(tmp_path / "four")
    assert main([other, "--rows", "200", "--weeks", "4", "--seed", "4",
                 "--until", "2026-11-28"]) == 0
    assert contents(other) == written
    assert main([local_url, "--rows", "200", "--seed", "4", "--next", "--weeks", "2"]) == 0
    assert [tranche_timestamp(k) for k in sorted(contents(local_url))] == delivery_times(
        6, FRIDAY_23 + timedelta(days=21))


def test_next_needs_a_tranche_to_follow_and_excludes_until_and_catalogue(
    local_url: str,
) -> None:
    assert main([local_url, "--next"]) == EXIT_NO_TRANCHE
    assert contents(local_url) == {}
    for bad in (["--until", "2026-11-21"], ["--catalogue", "50"]):
        with pytest.raises(SystemExit) as exited:
            main([local_url, "--next", *bad])
        assert exited.value.code == 2
