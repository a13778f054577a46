"""Tranches that break the data contract, one of each kind the contract knows, by name."""
from __future__ import annotations

from typing import Callable, Dict, List

from pipeline.simulate import CSV_HEADER, simulate_tranche
from testing_support.models import random_bytes

GOOD_ROWS = 400


def good_lines(seed: int, rows: int = GOOD_ROWS) -> List[str]:
    """A good tranche's CSV lines."""
    return simulate_tranche(rows, seed=seed).to_csv().decode().splitlines()


def _edit(row: int, column: int, value: str) -> Callable[[List[str]], List[str]]:
    """Replace one field of one data row (row 0 is the first after the header)."""
    def apply(lines: List[str]) -> List[str]:
        fields = lines[row + 1].split(",")
        fields[column] = value
        return lines[:row + 1] + [",".join(fields)] + lines[row + 2:]
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
    "hours-over-max": lambda: _csv(_edit(2, HOURS, "1000.5")(good_lines(18))),
    "negative-hours": lambda: _csv(_edit(2, HOURS, "-0.25")(good_lines(19))),
    "empty-product-code": lambda: _csv(_edit(4, CODE, "")(good_lines(20))),
    "too-few-rows": lambda: _csv(good_lines(21, rows=99)),
    "empty-file": lambda: b"",
    "header-only": lambda: (CSV_HEADER + "\n").encode(),
    "binary": lambda: b"\x89PNG\r\n\x1a\n\x00\x00" + random_bytes(seed=22),
    "unreadable-utf16": lambda: "\n".join(good_lines(23)).encode("utf-16"),
}
