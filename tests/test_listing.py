"""Lists of product codes in words: a few named, the rest counted."""
from __future__ import annotations

from pipeline.training.listing import SHOWN, counts_summary, some


def test_some_names_at_most_ten_and_counts_the_rest() -> None:
    assert some(["A", "B"]) == "A, B"
    codes = [f"P{i:05d}" for i in range(100_000)]
    words = some(codes)
    assert words.startswith("P00000, P00001") and words.endswith("P00009 and 99,990 more")
    assert len(words) < 120 and words.count(", ") == SHOWN - 1


def test_counts_summary_lists_a_few_codes_and_sums_up_many() -> None:
    assert counts_summary({}) == "no product codes"
    assert counts_summary({"SKU1": 3, "SKU2": 5}) == "2 product codes (SKU1 3, SKU2 5)"
    many = {f"P{i:05d}": 1 + (i % 10) for i in range(50_000)}
    many["P99999"] = 80_000
    words = counts_summary(many)
    assert words.startswith("50,001 product codes (rows per code: median ")
    assert "busiest P99999 80,000" in words and len(words) < 200
