"""Choosing tranches: the newest by the timestamp in the key, whatever ISO form it takes."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from pipeline.artefacts import choose_tranches, find_tranches, parse_timestamp, tranche_timestamp
from pipeline.store import open_store

UTC = timezone.utc


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-20T23:00:00", datetime(2026, 11, 20, 23, tzinfo=UTC)),
        ("2026-11-20T23:00:00Z", datetime(2026, 11, 20, 23, tzinfo=UTC)),
        ("2026-11-20T23:00:00z", datetime(2026, 11, 20, 23, tzinfo=UTC)),
        ("2026-11-20T23:00:00+01:00", datetime(2026, 11, 20, 22, tzinfo=UTC)),
        ("2026-11-20T23:00:00-0230", datetime(2026, 11, 21, 1, 30, tzinfo=UTC)),
        ("2026-11-20T23:00:00+00", datetime(2026, 11, 20, 23, tzinfo=UTC)),
        ("20261120T230000Z", datetime(2026, 11, 20, 23, tzinfo=UTC)),
        ("20261120T2300", datetime(2026, 11, 20, 23, tzinfo=UTC)),
        ("2026-11-20T23:00:00.5", datetime(2026, 11, 20, 23, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-20 23:00", datetime(2026, 11, 20, 23, tzinfo=UTC)),
        ("2026-11-20_23:00:00", datetime(2026, 11, 20, 23, tzinfo=UTC)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
    ],
)
def test_iso_forms_parse_to_the_same_utc_moment(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "latest", "2026-13-01T00:00:00", "2026-11-31", "2026-11-20T24:00:00",
        "2026-11-20T23:00:00+25:00", "2026-1120T230000", "2026-11-20T23:0000",
        "2026-11-20T23:00:00 UTC",
    ],
)
def test_non_timestamps_do_not_parse(text: str) -> None:
    assert parse_timestamp(text) is None


def test_only_tranche_keys_have_a_timestamp() -> None:
    assert tranche_timestamp("datasets/time_to_dispatch_2026-11-20T23:00:00.csv") is not None
    assert tranche_timestamp("datasets/time_to_dispatch_2026-11-20T23:00:00.csv.bak") is None
    assert tranche_timestamp("datasets/other_2026-11-20T23:00:00.csv") is None
    assert tranche_timestamp("archive/time_to_dispatch_2026-11-20T23:00:00.csv") is None


def test_newest_by_time_not_by_spelling() -> None:
    keys = [
        "datasets/time_to_dispatch_2026-11-20T23:00:00+05:00.csv",  # 18:00 UTC
        "datasets/time_to_dispatch_2026-11-20T20:00:00Z.csv",  # 20:00 UTC: the newest
        "datasets/time_to_dispatch_20261113T230000Z.csv",
        "datasets/time_to_dispatch_yesterday.csv",
        "datasets/notes.txt",
    ]
    choice = choose_tranches(keys)
    assert choice.latest is not None and choice.previous is not None
    assert choice.latest.key == keys[1]
    assert choice.previous.key == keys[0]
    assert choice.ignored == (keys[3], keys[4])


def test_one_tranche_has_no_previous_and_none_has_no_latest() -> None:
    only = choose_tranches(["datasets/time_to_dispatch_2026-11-20T23:00:00.csv"])
    assert only.latest is not None and only.previous is None
    assert choose_tranches(["datasets/x.csv"]).latest is None


def test_unparseable_keys_are_named_in_one_warning(
    local_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(local_url)
    store.write_bytes("datasets/time_to_dispatch_2026-11-20T23:00:00.csv", b"x")
    store.write_bytes("datasets/time_to_dispatch_last-friday.csv", b"x")
    with caplog.at_level(logging.WARNING):
        choice = find_tranches(store)
    assert choice.latest is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "time_to_dispatch_last-friday.csv" in warnings[0]


def test_the_history_window_holds_the_older_tranches_within_n_weeks_newest_first() -> None:
    weeks = [f"datasets/time_to_dispatch_2026-{m}T23:00:00.csv" for m in (
        "08-21", "08-28", "11-06", "11-13", "11-20")]
    choice = choose_tranches(list(reversed(weeks)) + ["datasets/notes.txt"])
    assert choice.latest is not None and choice.latest.key == weeks[-1]
    assert [t.key for t in choice.within_weeks(2)] == [weeks[3], weeks[2]]
    assert [t.key for t in choice.within_weeks(12)] == [weeks[3], weeks[2], weeks[1]]
    assert [t.key for t in choice.within_weeks(13)] == list(reversed(weeks[:-1]))
    assert choice.within_weeks(0) == () and choose_tranches([]).within_weeks(13) == ()
