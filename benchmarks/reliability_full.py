"""Run every reliability test, the slow variants included, and print what each took.

    python benchmarks/reliability_full.py [extra pytest args]

The default test run keeps one representative of each slow, subprocess-heavy case
(issue 5, items 1-4 and 8); this script sets RELIABILITY_FULL=1 so the rest run too
(S3 variants of start-up refusal and refresh, train losing its pointer write, serve
refusing on a failing store, every crash point, bad tranches through the CLI on S3).
Prints pass/fail counts, the wall time and the slowest tests; exits with pytest's code.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests").glob(
    "test_reliability_*.py"))
SLOWEST = 15


def main(extra: List[str]) -> int:
    """Run pytest over the reliability tests with the slow variants enabled."""
    env = dict(os.environ, RELIABILITY_FULL="1", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--durations={SLOWEST}", *TESTS, *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    lines = done.stdout.splitlines()
    durations = [line for line in lines if re.match(r"^\s*\d+\.\d+s (call|setup|teardown)", line)]
    summary = [line for line in lines if re.search(r"\d+ (passed|failed)", line)]
    failures = [line for line in lines if line.startswith("FAILED")]
    print(f"reliability tests (full): {summary[-1].strip('= ') if summary else 'no summary'}")
    print(f"wall time: {wall:.1f} s for {len(TESTS)} modules")
    print(f"slowest {len(durations)}:")
    for line in durations:
        print(f"  {line.strip()}")
    for line in failures:
        print(line)
    if done.returncode not in (0, 5) and not failures:
        print(done.stdout[-4000:], done.stderr[-2000:], sep="\n")
    return done.returncode


def parse_args(argv: List[str]) -> List[str]:
    """The arguments for pytest; ``--help`` prints this script's help and exits."""
    parser = argparse.ArgumentParser(
        prog="reliability_full.py", allow_abbrev=False,
        description="Run every reliability test (tests/test_reliability_*.py), the slow "
                    "variants included (RELIABILITY_FULL=1), and print pass/fail counts, the "
                    "wall time and the slowest tests. Any other argument goes to pytest, e.g. "
                    "-x or -k NAME.",
        epilog="exit status: pytest's")
    return parser.parse_known_args(argv)[1]


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))
