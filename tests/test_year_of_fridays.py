"""A few Fridays of the whole cycle under load and store faults (issue 12, part 2).

The same machinery as benchmarks/year_of_fridays.py (testing_support/fridays.py), shortened: a
handful of weeks on moto's S3 server behind the fault-injecting proxy, two replicas
refreshing every second and the load generator running throughout. Every week's
invariants hold and no valid request fails.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from testing_support.fridays import Year, breach_cases, schedule

WEEKS = 6
SEED = 82  # an outage, a lost response, two runs at once, a kill, a rollback; breaches


def test_the_schedule_is_seeded_and_varied() -> None:
    year = schedule(52, seed=1)
    assert year == schedule(52, seed=1) != schedule(52, seed=2)
    assert {w.tranche for w in year} >= {"good", "drifted", "breach", "twice", "older",
                                         "new-code", "vanish-code"}
    assert {w.run for w in year} >= {"normal", "503-burst", "outage", "stall", "lost-response",
                                     "killed", "two-at-once", "rollback"}
    assert {w.breach for w in year if w.breach} == set(breach_cases())


def test_a_few_fridays_keep_every_invariant(
    s3_endpoint: str, aws_env: Dict[str, str], tmp_path: Path
) -> None:
    lines = []
    with Year(s3_endpoint, tmp_path, WEEKS, SEED, rows=300, log=lines.append) as year:
        report = year.play()
    print("\n".join(lines + report.lines(refresh=1.0)))
    assert report.problems == [], "\n".join(lines)
    assert report.load["failed"] == 0
    assert report.load["single"] > 0 and report.load["batch"] > 0
    assert report.published > 0


CATALOGUE_WEEKS = 4
CATALOGUE_SEED = 64  # a stall, a kill, a rollback, an older tranche and two runs at once


def test_a_few_fridays_of_a_long_tailed_catalogue_answer_every_part_in_the_history(
    s3_endpoint: str, aws_env: Dict[str, str], tmp_path: Path
) -> None:
    lines = []
    with Year(s3_endpoint, tmp_path, CATALOGUE_WEEKS, CATALOGUE_SEED, rows=3000,
              catalogue=300, log=lines.append) as year:
        report = year.play()
    print("\n".join(lines + report.lines(refresh=1.0)))
    assert report.problems == [], "\n".join(lines)
    assert report.load["failed"] == 0 and report.load["batch"] > 0
    assert len(report.catalogue) >= 2, report.catalogue
    assert all("answered" in line for line in report.catalogue)
