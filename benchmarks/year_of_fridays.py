"""A year of Fridays: 52 weekly cycles of the whole pipeline under load and store faults.

    .tox/unit_and_functional_tests/bin/python benchmarks/year_of_fridays.py [--weeks 52] [--seed 1]
        [--catalogue 2000]

Starts moto's S3 server (a process of its own), then plays the weeks with the machinery
of ``testing_support/fridays.py``: a fault-injecting proxy in front of the train runs, two
serve_model replicas refreshing every second, a load generator sending valid single and
batch requests to both the whole time; a seeded, varied mix of tranche kinds and run kinds,
and every week's invariants checked. Prints one line per week and the year's figures;
exits 1 on any broken invariant. With ``--catalogue N`` the shop is a long-tailed catalogue
of N parts (new parts every week): each week that publishes also prints the answered share
of a fresh draw of its orders and the tail's accuracy. Needs the test environment (moto).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from testing_support.fridays import Year  # noqa: E402
from testing_support.stages import AWS_TEST_ENV  # noqa: E402
from testing_support.stores import moto_server  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    """Play the year; print the figures; 1 if any invariant broke."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=None,
                        help="rows per tranche (default 400; 20,000 with --catalogue)")
    parser.add_argument("--catalogue", type=int, default=0, metavar="N",
                        help="a long-tailed catalogue of N parts (e.g. 2000) instead of five parts")
    args = parser.parse_args(argv)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        os.environ.pop(name, None)
    with moto_server(own_process=True) as endpoint:
        started = time.monotonic()
        os.environ.update(AWS_TEST_ENV, AWS_ENDPOINT_URL=endpoint)
        with tempfile.TemporaryDirectory(prefix="fridays-") as workdir:
            rows = args.rows or (20_000 if args.catalogue else 400)
            with Year(endpoint, Path(workdir), args.weeks, args.seed, rows=rows,
                      catalogue=args.catalogue) as year:
                report = year.play()
    print(f"\nyear of Fridays, seed {args.seed}, {time.monotonic() - started:.0f} s in all "
          f"(set-up included)")
    for line in report.lines(refresh=1.0):
        print(line)
    for problem in report.problems:
        print(f"BROKEN: {problem}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
