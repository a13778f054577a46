"""Lists of product codes in words that stay short however large the catalogue.

Log shippers split or drop lines past 16 KB, and a gate's detail or an error message naming
100,000 parts helps no one: these name a few and count the rest.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

SHOWN = 10


def some(items: Iterable[str], shown: int = SHOWN) -> str:
    """``a, b, c`` or, past ``shown`` items, ``a, b, c and 99,997 more``."""
    listed = list(items)
    words = ", ".join(listed[:shown])
    return f"{words} and {len(listed) - shown:,} more" if len(listed) > shown else words


def counts_summary(counts: Mapping[str, int], shown: int = 3) -> str:
    """Rows per product code in a phrase: how many codes, the spread and the busiest few."""
    if not counts:
        return "no product codes"
    values = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    if len(counts) <= SHOWN:
        listed = ", ".join(f"{code} {n}" for code, n in counts.items())
        return f"{len(counts)} product code{'s' if len(counts) != 1 else ''} ({listed})"
    codes = list(counts)
    busiest = np.argsort(-values, kind="stable")[:shown]
    median, p90 = np.percentile(values, [50, 90])
    return (f"{len(counts):,} product codes (rows per code: median {median:g}, 90th percentile "
            f"{p90:g}, fewest {values.min():,}; busiest "
            + ", ".join(f"{codes[i]} {values[i]:,}" for i in busiest) + ")")
