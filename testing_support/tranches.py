"""Tranches that break the data contract, one of each kind the contract knows, by name."""
from __future__ import annotations

from typing import Callable, Dict, List

from pipeline.simulate import CSV_HEADER, simulate_tranche
from testing_support.models import random_bytes

GOOD_ROWS = 400


def good_lines(seed: int, rows: int = GOOD_ROWS) -> List[str]:
    """A good tranche's CSV lines."""
    return simulate_tranche(rows, seed=seed).to_csv().decode().splitlines()


BAD_EVERY = 20  # one data row in 20 edited: 5% of the rows, beyond the 1% that may be set aside


def _edit(row: int, column: int, value: str) -> Callable[[List[str]], List[str]]:
    """Replace one field of every BAD_EVERY-th data row from ``row`` on (row 0 is the first
    after the header)."""
    def apply(lines: List[str]) -> List[str]:
        edited = list(lines)
        for line in range(row + 1, len(lines), BAD_EVERY):
            fields = edited[line].split(",")
            fields[column] = value
            edited[line] = ",".join(fields)
        return edited
    return apply


def _csv(lines: List[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


HOURS, ORDERS, CODE = 0, 1, 2
BAD_TRANCHES: Dict[str, Callable[[], bytes]] = {
    "missing-column": lambda: _csv([",".join(f.split(",")[:2]) for f in good_lines(11)]),
    "wrong-type": lambda: _csv(_edit(7, ORDERS, "ten")(good_lines(12))),
    "null": lambda: _csv(_edit(3, HOURS, "")(good_lines(13))),
    "negative-orders": lambda: _csv(_edit(5, ORDERS, "-3")(good_lines(14))),
    "non-integral-orders": lambda: _csv(_edit(5, ORDERS, "12.5")(good_lines(15))),
    "inf-hours": lambda: _csv(_edit(9, HOURS, "inf")(good_lines(16))),
    "nan-orders": lambda: _csv(_edit(9, ORDERS, "NaN")(good_lines(17))),
    "hours-over-max": lambda: _csv(_edit(2, HOURS, "8760.5")(good_lines(18))),
    "negative-hours": lambda: _csv(_edit(2, HOURS, "-0.25")(good_lines(19))),
    "empty-product-code": lambda: _csv(_edit(4, CODE, "")(good_lines(20))),
    "every-row-bad": lambda: _csv(_edit(0, HOURS, "-1")(good_lines(21, rows=1))),
    "empty-file": lambda: b"",
    "header-only": lambda: (CSV_HEADER + "\n").encode(),
    "binary": lambda: b"\x89PNG\r\n\x1a\n\x00\x00" + random_bytes(seed=22),
    "unreadable-utf16": lambda: "\n".join(good_lines(23)).encode("utf-16"),
}
