"""The data contract: every rule, every boundary, every violation reported in one pass; bad rows
set aside within the tolerated share; enough rows counted over the history window."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.simulate import simulate_tranche
from pipeline.training.validation import (
    DEFAULT_MAX_HOURS, QUARANTINE_COLUMNS, ContractOptions, DataContractError, contract_schema,
    row_rules, tolerated_bad_rows, usable_rows, validate_tranche, window_rows_violation,
)

HEADER = "hours_to_dispatch,orders_placed,product_code"
LOOSE = ContractOptions()
STRICT = ContractOptions(max_bad_row_share=0.0)  # every bad row refuses the tranche


def csv(rows: Sequence[str], header: str = HEADER) -> bytes:
    """A CSV file from a header and data lines."""
    return ("\n".join([header, *rows]) + "\n").encode()


def good_rows(n: int = 5) -> List[str]:
    return [f"{1.5 + i},{10 + i},SKU00{i % 3 + 1}" for i in range(n)]


def broken(data: bytes, options: ContractOptions = STRICT) -> DataContractError:
    with pytest.raises(DataContractError) as caught:
        validate_tranche(data, options)
    return caught.value


def rules_of(error: DataContractError) -> List[str]:
    return [v.rule for v in error.violations]


def test_a_good_tranche_becomes_model_ready_arrays() -> None:
    data = csv(["2.5,10,SKU002", "1.25, 3 , SKU001 ", "4,0,SKU002"])
    tranche = validate_tranche(data, LOOSE)
    assert tranche.product_codes == ("SKU001", "SKU002")
    assert list(tranche.codes()) == ["SKU002", "SKU001", "SKU002"]
    np.testing.assert_array_equal(tranche.orders_placed, [10.0, 3.0, 0.0])
    np.testing.assert_array_equal(tranche.hours_to_dispatch, [2.5, 1.25, 4.0])
    assert tranche.rows_by_code() == {"SKU001": 1, "SKU002": 2}


def test_a_simulated_tranche_meets_the_default_contract() -> None:
    tranche = validate_tranche(simulate_tranche(500, seed=3).to_csv())
    assert tranche.rows == 500 and len(tranche.product_codes) == 5


def test_every_rule_has_a_name_and_a_description() -> None:
    rules = row_rules(ContractOptions())
    assert len({r.name for r in rules}) == len(rules)
    assert all(r.description for r in rules)


def test_the_row_rules_are_the_checks_of_one_pandera_schema() -> None:
    schema = contract_schema(ContractOptions())
    checks = [check.name for column in schema.columns.values() for check in column.checks]
    assert sorted(checks) == sorted(r.name for r in row_rules(ContractOptions()))


@pytest.mark.parametrize(
    "line, rule",
    [
        ("abc,10,SKU001", "hours_to_dispatch_not_a_number"),
        ("1.5,ten,SKU001", "orders_placed_not_a_number"),
        ("1.5,1_000,SKU001", "orders_placed_not_a_number"),
        (",10,SKU001", "hours_to_dispatch_missing"),
        ("1.5,,SKU001", "orders_placed_missing"),
        ("1.5,10,", "product_code_missing"),
        ("1.5,10,   ", "product_code_missing"),
        ("1.5,10", "product_code_missing"),
        ("1.5,-1,SKU001", "orders_placed_negative"),
        ("1.5,2.5,SKU001", "orders_placed_not_whole"),
        ("1.5,inf,SKU001", "orders_placed_not_finite"),
        ("1.5,nan,SKU001", "orders_placed_not_finite"),
        ("-0.01,10,SKU001", "hours_to_dispatch_negative"),
        ("nan,10,SKU001", "hours_to_dispatch_not_finite"),
        ("-inf,10,SKU001", "hours_to_dispatch_not_finite"),
        ("8760.01,10,SKU001", "hours_to_dispatch_above_max"),
        ("1.5,10,SKU001,surplus", "extra_fields"),
    ],
)
def test_each_row_rule_names_the_rule_and_the_line(line: str, rule: str) -> None:
    data = csv(good_rows(3) + [line] + good_rows(2))
    error = broken(data)
    assert rules_of(error) == [rule, "too_many_bad_rows"]
    violation = error.violations[0]
    assert violation.rows == 1
    assert [e.line for e in violation.examples] == [5]
    assert rule in str(error) and "line 5" in str(error)
    kept = validate_tranche(data)  # by default one row in any tranche is set aside instead
    assert kept.rows == 5 and kept.set_aside is not None
    assert kept.set_aside.violations == error.violations[:1]
    assert kept.set_aside.table.decode().splitlines()[1].startswith(f"5,{rule},")


def test_every_violation_is_reported_together_with_counts_and_few_examples() -> None:
    bad = ["x,1,A"] * 7 + ["1,-2,A", "9000,1,A", "1,1,"]
    error = broken(csv(good_rows(3) + bad), ContractOptions(examples=2))
    by_rule = {v.rule: v for v in error.violations}
    assert set(by_rule) == {
        "hours_to_dispatch_not_a_number", "orders_placed_negative",
        "hours_to_dispatch_above_max", "product_code_missing", "too_many_bad_rows",
    }
    assert "10 of the 13 data rows" in by_rule["too_many_bad_rows"].description
    assert by_rule["hours_to_dispatch_not_a_number"].rows == 7
    assert [e.line for e in by_rule["hours_to_dispatch_not_a_number"].examples] == [5, 6]
    assert by_rule["hours_to_dispatch_not_a_number"].to_dict()["examples"][0]["values"] == {
        "hours_to_dispatch": "x"
    }


@pytest.mark.parametrize("value, ok", [("8760", True), ("8760.0001", False)])
def test_max_hours_boundary(value: str, ok: bool) -> None:
    data = csv(good_rows(2) + [f"{value},1,SKU001"])
    if ok:
        assert validate_tranche(data, STRICT).hours_to_dispatch.max() == 8760.0
    else:
        assert rules_of(broken(data)) == ["hours_to_dispatch_above_max", "too_many_bad_rows"]


def test_max_hours_is_an_option() -> None:
    data = csv(good_rows(2) + ["50,1,SKU001"])
    assert rules_of(broken(data, ContractOptions(max_hours=49.9, max_bad_row_share=0))) == [
        "hours_to_dispatch_above_max", "too_many_bad_rows"
    ]
    validate_tranche(data, ContractOptions(max_hours=50, max_bad_row_share=0))


def test_a_real_shops_slow_parcels_are_data_not_bad_rows() -> None:
    """A parcel forgotten for two months (1,467 h in the real data) is within the default."""
    tranche = validate_tranche(csv(good_rows(40) + ["1467.6122,24,bed_bath_table"]), STRICT)
    assert tranche.rows == 41 and tranche.set_aside is None
    assert DEFAULT_MAX_HOURS == 365 * 24


@pytest.mark.parametrize("line", ["0,0,SKU001", "1,3.0,SKU001", "1,1e2,SKU001", "+1,+2,SKU001"])
def test_boundary_values_that_are_valid(line: str) -> None:
    assert validate_tranche(csv([line]), LOOSE).rows == 1


def test_a_tranche_of_a_few_rows_meets_the_contract_on_its_own() -> None:
    assert validate_tranche(csv(good_rows(3))).rows == 3


@pytest.mark.parametrize("newest, older, needed", [
    (100, [], False), (99, [], True), (30, [40, 30], False), (30, [40, 29], True), (1, [99], False),
])
def test_the_minimum_rows_count_the_history_window(
    newest: int, older: List[int], needed: bool
) -> None:
    found = window_rows_violation(newest, older, 100, history_weeks=13)
    assert (found is not None) == needed
    if found is not None:
        assert found.rule == "too_few_rows"
        assert f"the newest tranche has {newest} valid rows" in found.description
        assert f"{newest + sum(older)} in all" in found.description
        assert "at least 100 valid rows are needed (--min-rows)" in found.description


def test_without_a_history_window_the_newest_tranche_alone_must_hold_the_minimum() -> None:
    found = window_rows_violation(30, [], 100, history_weeks=0)
    assert found is not None and "--history-weeks 0" in found.description


@pytest.mark.parametrize(
    "data, rule, words",
    [
        (b"", "file_empty", "empty"),
        (b" \n\n  \n", "file_empty", "empty"),
        (b"PK\x03\x04\x00\x00binary", "file_binary", "binary"),
        (HEADER.encode() + b"\n1,2,caf\xe9\n", "file_not_utf8", "line 2"),
        (b"hours_to_dispatch;orders_placed;product_code\n1;2;A\n", "wrong_delimiter", "';'"),
        (b"hours_to_dispatch\torders_placed\tproduct_code\n1\t2\tA\n", "wrong_delimiter", "\\t"),
        (HEADER.encode() + b"\n", "no_data_rows", "needs at least one valid row"),
        (HEADER.encode() + b"\n\n\n", "no_data_rows", "no data rows"),
        (b"hours_to_dispatch,orders,product_code\n1,2,A\n", "missing_columns", "orders_placed"),
        (HEADER.encode() + b",orders_placed\n1,2,A,3\n", "duplicate_columns", "orders_placed"),
        (HEADER.encode() + b'\n"1,2,A\n', "unreadable_csv", "cannot be parsed"),
    ],
)
def test_unusable_files_get_a_clear_message(data: bytes, rule: str, words: str) -> None:
    error = broken(data)
    assert rules_of(error) == [rule]
    assert words in str(error)


def test_extra_columns_are_ignored_and_reported() -> None:
    data = csv(["1,2,A,x", "3,4,B,y"], header="product_code,note,orders_placed,hours_to_dispatch")
    with pytest.raises(DataContractError):
        validate_tranche(data, LOOSE)  # 'x' and 'y' are not hours: every row is bad
    data = csv(["A,x,2,1", "B,y,4,3"], header="product_code,note,orders_placed,hours_to_dispatch")
    tranche = validate_tranche(data, LOOSE)
    assert tranche.ignored_columns == ("note",)
    np.testing.assert_array_equal(tranche.hours_to_dispatch, [1.0, 3.0])


def test_byte_order_mark_crlf_quotes_and_blank_lines_are_tolerated() -> None:
    data = b'\xef\xbb\xbf' + csv(['"1.5","2","SKU001"', "", "2,3,SKU002"]).replace(b"\n", b"\r\n")
    tranche = validate_tranche(data, LOOSE)
    assert tranche.rows == 2 and tranche.product_codes == ("SKU001", "SKU002")


def test_line_numbers_count_skipped_blank_lines() -> None:
    error = broken(csv(["1,2,A", "", "", "x,2,A"]))
    assert error.violations[0].examples[0].line == 5


def test_usable_rows_keeps_only_rows_breaking_no_rule() -> None:
    tranche = usable_rows(csv(["1,2,A", "x,2,A", "3,-1,B", "2,4,B"]))
    assert tranche is not None and tranche.rows == 2
    np.testing.assert_array_equal(tranche.hours_to_dispatch, [1.0, 2.0])
    assert usable_rows(b"\x00\x01") is None
    empty = usable_rows(csv(["x,2,A"]))
    assert empty is not None and empty.rows == 0 and empty.product_codes == ()


def test_a_header_with_a_stray_carriage_return_is_a_contract_error() -> None:
    with pytest.raises(DataContractError) as refused:
        validate_tranche(b"hours_to_dispatch,orders\rplaced,product_code\n1,2,SKU001\n", LOOSE)
    assert "header line is not valid CSV" in str(refused.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(alphabet=',;\n\r"\t 0123456789.-eainfSKU', max_size=300)
       .map(lambda t: (HEADER + "\n" + t).encode()))
def test_any_bytes_give_rows_or_a_contract_error_never_a_crash(data: bytes) -> None:
    try:
        tranche = validate_tranche(data, LOOSE)
    except DataContractError as error:
        assert error.violations and str(error)
    else:
        assert tranche.rows >= 1
        assert np.isfinite(tranche.orders_placed).all() and (tranche.orders_placed >= 0).all()
        assert np.isfinite(tranche.hours_to_dispatch).all()


# ------------------------------------------------------------------ rows set aside


def quarantined(tranche_rows: int, bad: Sequence[str]) -> bytes:
    """A simulated tranche of ``tranche_rows`` rows, the last ``len(bad)`` of them bad."""
    good = simulate_tranche(tranche_rows - len(bad), seed=5).to_csv().decode().splitlines()
    return csv(good[1:] + list(bad))


@pytest.mark.parametrize("rows, share, tolerated", [
    (1001, 0.01, 10), (1000, 0.01, 10), (999, 0.01, 9), (47, 0.01, 1), (1, 0.01, 1),
    (100, 0.29, 29), (100, 0.07, 7), (1000, 0.0, 0),
])
def test_the_tolerated_share_is_counted_as_written_and_one_row_is_always_tolerated(
    rows: int, share: float, tolerated: int
) -> None:
    """0.29 x 100 is 28.999999999999996 in binary floating point: the count is still 29."""
    assert tolerated_bad_rows(rows, share) == tolerated


def test_a_1001_row_tranche_with_one_bad_row_keeps_the_rest_and_sets_it_aside() -> None:
    tranche = validate_tranche(quarantined(1001, ["-2.5,14,SKU003"]))
    assert tranche.rows == 1000 and tranche.rows_set_aside == 1
    found = tranche.set_aside
    assert found is not None and found.rows_read == 1001
    assert found.rules() == {"hours_to_dispatch_negative": 1}
    assert found.to_dict() == {"rows_read": 1001, "rows_set_aside": 1,
                               "rules": {"hours_to_dispatch_negative": 1}}
    assert found.table.decode().splitlines() == [
        ",".join(QUARANTINE_COLUMNS), "1002,hours_to_dispatch_negative,-2.5,14,SKU003"]
    assert (tranche.hours_to_dispatch >= 0).all()


def test_each_row_set_aside_keeps_its_line_every_rule_it_broke_and_its_raw_values() -> None:
    bad = ["soon,-1,SKU001", "9000.5,3.5,", "1.0,3,SKU002,surplus"]
    tranche = validate_tranche(quarantined(1000, bad), ContractOptions(max_bad_row_share=0.005))
    assert tranche.rows == 997 and tranche.set_aside is not None
    lines = tranche.set_aside.table.decode().splitlines()
    assert lines[1:] == [
        "999,orders_placed_negative;hours_to_dispatch_not_a_number,soon,-1,SKU001",
        "1000,product_code_missing;orders_placed_not_whole;hours_to_dispatch_above_max,9000.5,"
        "3.5,",
        "1001,extra_fields,1.0,3,SKU002",
    ]
    assert "3 of 1000 data rows set aside" in tranche.set_aside.describe()


@pytest.mark.parametrize("bad_rows, refused", [(10, False), (11, True), (50, True)])
def test_bad_rows_beyond_the_share_refuse_the_tranche_listing_every_violation(
    bad_rows: int, refused: bool
) -> None:
    bad = ["-1,3,SKU001"] * (bad_rows - 1) + ["1.0,ten,SKU002"]
    data = quarantined(1001, bad)
    if not refused:
        assert validate_tranche(data).rows_set_aside == bad_rows
        return
    error = broken(data, LOOSE)
    assert rules_of(error) == ["orders_placed_not_a_number", "hours_to_dispatch_negative",
                               "too_many_bad_rows"]
    assert f"{bad_rows} of the 1001 data rows break a row rule; at most 10" in str(error)


def test_a_tranche_whose_only_rows_are_bad_is_refused_even_within_the_share() -> None:
    error = broken(csv(["-1,2,A"]), LOOSE)
    assert rules_of(error) == ["hours_to_dispatch_negative", "no_valid_rows"]
    assert "needs at least one valid row" in str(error)


def test_the_contract_is_the_same_for_rows_set_aside_and_rows_refused() -> None:
    data = csv(good_rows(200) + ["x,1,A", "2,-1,B"])
    kept = validate_tranche(data)
    assert kept.set_aside is not None
    assert [v.rule for v in kept.set_aside.violations] == rules_of(broken(data))[:-1]
