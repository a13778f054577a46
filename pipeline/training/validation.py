"""The data contract a tranche must meet before any training, checked in one pass.

Structural checks (empty, binary, not UTF-8, wrong delimiter, no header, no data
rows, missing columns) come first; then every row rule below is evaluated at once
over the whole file as one lazy validation of a pandera schema (a named check
per rule), and every violation is reported together: which rule, how many rows,
and a few example rows with their line numbers. pandas reads every column as
text and numbers are parsed leniently, so a value that is not a number is a
violation with examples, never a crash.

Rows that break a row rule are set aside, up to a tolerated share of the tranche's data rows
(``max_bad_row_share``, 1% by default, and one row in any tranche unless the share is 0): the
rest of the tranche is used, and the rows set aside become the quarantine file, each with its
line and the rules it broke. Beyond that share, or when no valid row is left, the whole tranche
is refused with every violation listed. How many valid rows are enough is not a property of
one tranche: :func:`window_rows_violation` counts the newest tranche with its history window.

Decisions: columns beyond the three required ones are ignored (and reported);
blank lines are skipped; surrounding whitespace is stripped from every value;
product codes are case-sensitive. Line numbers assume no quoted field spans lines.
"""
from __future__ import annotations

import codecs
import csv
import io
import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import pandas as pd
import pandera.pandas as pa

HOURS = "hours_to_dispatch"
ORDERS = "orders_placed"
CODE = "product_code"
REQUIRED_COLUMNS: Tuple[str, ...] = (HOURS, ORDERS, CODE)
# A store's first tranche trains on its own: a small shop's first week (the real data of issue 20
# starts with 46 orders) must give a model, and a handful of rows gives nothing to hold out.
DEFAULT_MIN_ROWS = 20
# A year: no order waits that long for dispatch, so a larger value is a unit or date error. Real
# slow dispatches (a parcel forgotten for weeks, 1,000-2,000 h) are data the model and its p90
# bound must see, not rows to set aside (docs/operations.md, the data contract).
DEFAULT_MAX_HOURS = 8760.0
DEFAULT_MAX_BAD_ROW_SHARE = 0.01
DEFAULT_EXAMPLES = 3
QUARANTINE_COLUMNS: Tuple[str, ...] = ("line", "rule") + REQUIRED_COLUMNS
_LINE = "__line"
_EXTRA = "__extra"
_OTHER_DELIMITERS = (";", "\t", "|")
NEEDED = (f"a tranche needs at least one valid row of orders under its header "
          f"({','.join(REQUIRED_COLUMNS)})")


def _number(column: str) -> str:
    return f"__{column}_number"


def _raw(column: str) -> str:
    return f"__{column}_raw"


@dataclass(frozen=True)
class ContractOptions:
    """The tunable parts of the contract."""

    min_rows: int = DEFAULT_MIN_ROWS
    max_hours: float = DEFAULT_MAX_HOURS
    max_bad_row_share: float = DEFAULT_MAX_BAD_ROW_SHARE
    examples: int = DEFAULT_EXAMPLES


@dataclass(frozen=True)
class Example:
    """One offending row: its line in the file and its raw values in the rule's columns."""

    line: int
    values: Tuple[Tuple[str, Optional[str]], ...]

    def describe(self) -> str:
        """``line 7 (orders_placed='ten')``."""
        shown = ", ".join(f"{name}={value!r}" for name, value in self.values)
        return f"line {self.line} ({shown})" if shown else f"line {self.line}"


@dataclass(frozen=True)
class Violation:
    """One broken rule: its name, what it demands, how many rows break it, some examples."""

    rule: str
    description: str
    rows: int = 0
    examples: Tuple[Example, ...] = ()

    def describe(self) -> str:
        """The violation in one phrase of plain words."""
        text = f"{self.rule}: {self.description}"
        if self.rows:
            text += f" ({self.rows} row{'s' if self.rows != 1 else ''}"
            if self.examples:
                text += ", e.g. " + "; ".join(e.describe() for e in self.examples)
            text += ")"
        return text

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready form."""
        return {
            "rule": self.rule,
            "description": self.description,
            "rows": self.rows,
            "examples": [{"line": e.line, "values": dict(e.values)} for e in self.examples],
        }


class DataContractError(Exception):
    """The tranche breaks the data contract; ``violations`` lists every broken rule."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations: Tuple[Violation, ...] = tuple(violations)
        count = len(self.violations)
        summary = "; ".join(v.describe() for v in self.violations)
        super().__init__(f"{count} rule{'s' if count != 1 else ''} broken: {summary}")


Flags = Callable[[pd.Series], pd.Series]


@dataclass(frozen=True)
class RowRule:
    """A declarative row rule on one column of the prepared frame: ``ok`` is true where kept."""

    name: str
    description: str
    column: str
    shown: Tuple[str, ...]
    ok: Flags
    ignore_na: bool = True


def _parse(text: pd.Series) -> pd.Series:
    """Numbers from text (surrounding blanks allowed): NaN where missing or not a number.

    A spelled-out NaN is a number that is not finite, never "not a number": it becomes inf,
    which keeps it out of the missing values the other rules skip.
    """
    numbers = pd.to_numeric(text, errors="coerce").astype(np.float64)
    failed = numbers.isna() & text.notna()
    if failed.any():
        spelled = text[failed].astype(str).str.strip().str.lower().str.lstrip("+-").eq("nan")
        numbers[spelled[spelled].index] = np.inf
    return numbers


def _is_number(text: pd.Series) -> pd.Series:
    parsed: pd.Series = _parse(text).notna()
    return parsed


def row_rules(options: ContractOptions) -> Tuple[RowRule, ...]:
    """The row rules of the contract, as checks on the columns of the prepared frame."""
    rules: List[RowRule] = [
        RowRule(
            "extra_fields", "a row has more fields than the header", _EXTRA, (_EXTRA,),
            lambda extra: extra.isna(), ignore_na=False,
        )
    ]
    for column in REQUIRED_COLUMNS:
        rules.append(RowRule(
            f"{column}_missing", f"{column} must not be empty or missing", column, (column,),
            lambda text: text.notna(), ignore_na=False,
        ))
    for column in (ORDERS, HOURS):
        number = _number(column)
        rules += [
            RowRule(f"{column}_not_a_number", f"{column} must be a number", column, (column,),
                    _is_number),
            RowRule(f"{column}_not_finite", f"{column} must be finite", number, (column,),
                    lambda x: pd.Series(np.isfinite(x), index=x.index)),
            RowRule(f"{column}_negative", f"{column} must be >= 0", number, (column,),
                    lambda x: ~(np.isfinite(x) & (x < 0))),
        ]
    max_hours = options.max_hours
    rules += [
        RowRule(f"{ORDERS}_not_whole", f"{ORDERS} must be a whole count", _number(ORDERS),
                (ORDERS,), lambda x: ~(np.isfinite(x) & (x != np.floor(x)))),
        RowRule(f"{HOURS}_above_max", f"{HOURS} must be at most {max_hours:g}", _number(HOURS),
                (HOURS,), lambda x: ~(np.isfinite(x) & (x > max_hours))),
    ]
    return tuple(rules)


def contract_schema(options: ContractOptions) -> pa.DataFrameSchema:
    """The pandera schema of a prepared tranche: one named check per row rule."""
    checks: Dict[str, List[pa.Check]] = {}
    for rule in row_rules(options):
        checks.setdefault(rule.column, []).append(pa.Check(
            rule.ok, name=rule.name, description=rule.description, ignore_na=rule.ignore_na
        ))
    columns = {
        name: pa.Column(float if name.endswith("_number") else None, checks=found, nullable=True)
        for name, found in checks.items()
    }
    return pa.DataFrameSchema(columns, name="time_to_dispatch tranche")


@dataclass(frozen=True)
class SetAside:
    """The rows of a tranche set aside for breaking a row rule, within the tolerated share: how
    many of the data rows read, every broken rule (rows and example lines) and the quarantine
    file's content (one line per row set aside: its line, the rules it broke, its raw values)."""

    rows_read: int
    rows: int
    violations: Tuple[Violation, ...]
    table: bytes

    def rules(self) -> Dict[str, int]:
        """Rows breaking each rule (a row breaking two rules counts for both)."""
        return {v.rule: v.rows for v in self.violations}

    def describe(self) -> str:
        """The rows set aside in one phrase of plain words."""
        return (f"{self.rows} of {self.rows_read} data rows set aside: "
                + "; ".join(v.describe() for v in self.violations))

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready form (counts and rules; the rows themselves are in the quarantine file)."""
        return {"rows_read": self.rows_read, "rows_set_aside": self.rows, "rules": self.rules()}


@dataclass(frozen=True)
class ValidTranche:
    """The rows of a tranche that meet the contract, as arrays ready for the model, and the rows
    set aside for breaking a row rule (None when every row is valid)."""

    product_codes: Tuple[str, ...]
    code_index: npt.NDArray[np.int64]
    orders_placed: npt.NDArray[np.float64]
    hours_to_dispatch: npt.NDArray[np.float64]
    ignored_columns: Tuple[str, ...] = ()
    set_aside: Optional[SetAside] = None

    @property
    def rows(self) -> int:
        """How many rows."""
        return int(len(self.code_index))

    @property
    def rows_set_aside(self) -> int:
        """How many rows of the tranche were set aside."""
        return 0 if self.set_aside is None else self.set_aside.rows

    def codes(self) -> npt.NDArray[np.str_]:
        """Each row's product code."""
        table = np.asarray(self.product_codes if self.product_codes else ("",), dtype=str)
        codes: npt.NDArray[np.str_] = table[self.code_index]
        return codes

    def rows_by_code(self) -> Dict[str, int]:
        """Row counts per product code."""
        counts = np.bincount(self.code_index, minlength=len(self.product_codes))
        return {code: int(n) for code, n in zip(self.product_codes, counts)}

    def subset(self, rows: npt.NDArray[np.int64]) -> "ValidTranche":
        """The tranche restricted to some row positions (codes keep their index)."""
        return ValidTranche(
            self.product_codes,
            self.code_index[rows],
            self.orders_placed[rows],
            self.hours_to_dispatch[rows],
            self.ignored_columns,
        )


@dataclass(frozen=True)
class _Read:
    frame: pd.DataFrame
    ignored_columns: Tuple[str, ...]


def _structure(data: bytes) -> Tuple[bytes, List[str]]:
    """The CSV body after the header, and the header's names; DataContractError if unusable."""
    if not data.strip():
        raise DataContractError([Violation("file_empty", f"the file is empty: {NEEDED}")])
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataContractError([Violation(
            "file_binary", f"the file is binary, not CSV text (a NUL byte at offset {nul})"
        )])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataContractError([Violation(
            "file_not_utf8", f"the file is not UTF-8 text (invalid byte at line {line})"
        )]) from None
    if text.startswith("\ufeff"):
        data, text = data[len(codecs.BOM_UTF8):], text[1:]
    first, _, rest = text.partition("\n")
    try:
        names = [name.strip() for name in next(csv.reader([first.rstrip("\r")]), [])]
    except csv.Error as exc:
        raise DataContractError([Violation(
            "header_unreadable", f"the header line is not valid CSV ({exc}): {first.strip()!r}"
        )]) from None
    if len(names) == 1:
        for delimiter in _OTHER_DELIMITERS:
            if delimiter in first:
                raise DataContractError([Violation(
                    "wrong_delimiter",
                    f"the header is separated by {delimiter!r}, not by commas: {first.strip()!r}",
                )])
    if not rest.strip():
        raise DataContractError([Violation(
            "no_data_rows", f"the file has a header ({first.strip()!r}) but no data rows: {NEEDED}"
        )])
    return data, names


def _read(data: bytes) -> _Read:
    """Parse the CSV into raw text columns with line numbers; structural problems raise."""
    body, names = _structure(data)
    problems: List[Violation] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        problems.append(Violation(
            "missing_columns",
            f"required column(s) {', '.join(missing)} not in the header {names}",
        ))
    duplicated = sorted({n for n in names if n in REQUIRED_COLUMNS and names.count(n) > 1})
    if duplicated:
        problems.append(Violation(
            "duplicate_columns", f"column(s) {', '.join(duplicated)} appear more than once"
        ))
    if problems:
        raise DataContractError(problems)
    fields = max(len(names), _most_fields(body))
    positional = [f"__c{i}" for i in range(fields)]
    # Product codes repeat: as a category, a million rows hold each distinct code's text once.
    types: Dict[str, Any] = {name: str for name in positional}
    types[f"__c{names.index(CODE)}"] = "category"
    try:
        raw = pd.read_csv(
            io.BytesIO(body), header=None, skiprows=1, names=positional, dtype=types,
            na_filter=False, skip_blank_lines=False, encoding="utf-8", engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataContractError([Violation(
            "unreadable_csv", f"the file cannot be parsed as CSV: {message}"
        )]) from None
    raw.index = pd.RangeIndex(2, 2 + len(raw), name=_LINE)
    maybe_blank = raw[raw.iloc[:, 0].eq("")]
    if len(maybe_blank):
        raw = raw.drop(maybe_blank.index[maybe_blank.eq("").all(axis=1)])
    frame = pd.DataFrame(
        {_raw(c): raw[f"__c{names.index(c)}"] for c in REQUIRED_COLUMNS}, index=raw.index
    )
    extra = raw[positional[len(names):]]
    frame[_EXTRA] = extra.replace("", None).bfill(axis=1).iloc[:, 0] if extra.shape[1] else None
    ignored = tuple(n for n in names if n not in REQUIRED_COLUMNS)
    return _Read(frame, ignored)


def _most_fields(body: bytes) -> int:
    """An upper bound of the fields on any line (quoted commas count too), one pass in numpy."""
    buffer = np.frombuffer(body, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == ord("\n"))
    commas = np.flatnonzero(buffer == ord(","))
    if not len(commas):
        return 1
    return int(np.bincount(np.searchsorted(newlines, commas)).max()) + 1


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Beside the raw columns: text (blank -> missing), numbers, and product codes stripped."""
    prepared = frame.copy()
    for column in (ORDERS, HOURS):
        raw = frame[_raw(column)]
        numbers = _parse(raw)
        unparsed = raw[numbers.isna()]
        blank = unparsed.index[unparsed.str.strip().eq("")]
        prepared[column] = raw.mask(raw.index.isin(blank), None)
        prepared[_number(column)] = numbers
    # Strip each distinct code once, not every row's copy of it.
    index, unique = pd.factorize(frame[_raw(CODE)])
    stripped = pd.Index(unique).str.strip()
    lookup = np.append(stripped.where(stripped != "", None).to_numpy(dtype=object),
                       np.array([None], dtype=object))
    prepared[CODE] = lookup[index]  # position -1 (a missing value) is the appended None
    return prepared


def _failures(prepared: pd.DataFrame, options: ContractOptions) -> Dict[str, pd.Index]:
    """The lines that break each rule, from one lazy pandera validation of the whole frame."""
    try:
        with warnings.catch_warnings():
            # pandera's own use of a pandas API that pandas has deprecated: not our user's news.
            warnings.simplefilter("ignore", FutureWarning)
            contract_schema(options).validate(prepared, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        return {
            str(rule): pd.Index(lines.unique()).sort_values()
            for rule, lines in cases.groupby("check", sort=False)["index"]
        }
    return {}


def _example(prepared: pd.DataFrame, rule: RowRule, line: int) -> Example:
    labels = ["first extra field" if c == _EXTRA else c for c in rule.shown]
    values = [prepared.at[line, c if c == _EXTRA else _raw(c)] for c in rule.shown]
    return Example(int(line), tuple(
        (label, None if pd.isna(value) or value == "" else str(value))
        for label, value in zip(labels, values)
    ))


@dataclass(frozen=True)
class _Checked:
    """Every rule over every row: the violations, the lines breaking each rule, and a per-row
    'breaks nothing' mask."""

    violations: Tuple[Violation, ...]
    failures: Dict[str, pd.Index]
    clean: npt.NDArray[np.bool_]


def _check(prepared: pd.DataFrame, options: ContractOptions) -> _Checked:
    failures = _failures(prepared, options)
    violations: List[Violation] = []
    for rule in row_rules(options):
        lines = failures.get(rule.name)
        if lines is not None and len(lines):
            examples = tuple(_example(prepared, rule, line) for line in lines[:options.examples])
            violations.append(Violation(rule.name, rule.description, len(lines), examples))
    broken = [np.asarray(lines) for lines in failures.values()]
    clean: npt.NDArray[np.bool_] = ~prepared.index.isin(np.concatenate(broken) if broken else [])
    return _Checked(tuple(violations), failures, clean)


def tolerated_bad_rows(rows: int, share: float) -> int:
    """How many of a tranche's data rows may be set aside: ``share`` of them, rounded down, and
    one row in any tranche unless ``share`` is 0.

    The share is taken as written (0.01 is exactly 1/100, so 10 of 1,000 rows), never as the
    nearest binary fraction, so no count at the boundary depends on floating-point rounding.
    """
    if share <= 0:
        return 0
    return max(1, math.floor(Fraction(repr(float(share))) * rows))


def _quarantine_table(prepared: pd.DataFrame, checked: _Checked,
                      options: ContractOptions) -> bytes:
    """The quarantine file: one line per row set aside, its line, the rules it broke
    (``;``-separated, in the contract's order) and its raw values as in the tranche."""
    pairs = [pd.DataFrame({"line": np.asarray(checked.failures[rule.name]), "rule": rule.name})
             for rule in row_rules(options) if rule.name in checked.failures]
    joined = pd.concat(pairs).groupby("line", sort=True)["rule"].agg(";".join)
    raw = prepared.loc[joined.index]
    line, rule, *columns = QUARANTINE_COLUMNS
    table = pd.DataFrame({line: joined.index.to_numpy(), rule: joined.to_numpy()})
    for column in columns:
        table[column] = raw[_raw(column)].astype(object).to_numpy()
    return str(table.to_csv(index=False, lineterminator="\n")).encode("utf-8")


def validate_tranche(data: bytes, options: ContractOptions = ContractOptions()) -> ValidTranche:
    """The tranche's valid rows, with the rows that break a row rule set aside (within the
    tolerated share); DataContractError on a structural break, beyond the share, or when no
    valid row is left."""
    read = _read(data)
    prepared = _prepare(read.frame)
    checked = _check(prepared, options)
    rows_read = len(prepared)
    if not rows_read:
        raise DataContractError([Violation(
            "no_data_rows", f"the file has a header but only blank lines: {NEEDED}")])
    bad = rows_read - int(checked.clean.sum())
    if not bad:
        return _tranche(prepared, read.ignored_columns)
    limit = tolerated_bad_rows(rows_read, options.max_bad_row_share)
    if bad > limit:
        raise DataContractError(list(checked.violations) + [Violation(
            "too_many_bad_rows",
            f"{bad} of the {rows_read} data rows break a row rule; at most {limit} may be set "
            f"aside ({options.max_bad_row_share:.4g} of the rows, one in any tranche unless 0: "
            f"--max-bad-row-share)",
        )])
    if bad == rows_read:
        raise DataContractError(list(checked.violations) + [Violation(
            "no_valid_rows", f"every data row breaks a row rule: {NEEDED}")])
    set_aside = SetAside(rows_read, bad, checked.violations,
                         _quarantine_table(prepared, checked, options))
    return _tranche(prepared[checked.clean], read.ignored_columns, set_aside)


def window_rows_violation(
    newest_rows: int, older_rows: Sequence[int], min_rows: int, history_weeks: int
) -> Optional[Violation]:
    """``too_few_rows`` when the newest tranche and the older tranches of its history window
    hold fewer than ``min_rows`` valid rows together; None when they hold enough."""
    total = newest_rows + sum(older_rows)
    if total >= min_rows:
        return None
    if history_weeks > 0:
        window = (f"the {len(older_rows)} older tranche(s) of the history window "
                  f"(--history-weeks {history_weeks}) {sum(older_rows)} more: {total} in all")
        wait = "once more weeks have landed, or with a lower --min-rows"
    else:
        window = "no older tranche is read (--history-weeks 0)"
        wait = "with a history window (--history-weeks) or a lower --min-rows"
    return Violation("too_few_rows", (
        f"the newest tranche has {newest_rows} valid rows and {window}; at least {min_rows} "
        f"valid rows are needed (--min-rows): the model trains {wait}"))


def _tranche(frame: pd.DataFrame, ignored: Tuple[str, ...],
             set_aside: Optional[SetAside] = None) -> ValidTranche:
    index, unique = pd.factorize(frame[CODE], sort=True)
    return ValidTranche(
        tuple(str(c) for c in unique),
        np.ascontiguousarray(index, dtype=np.int64),
        frame[_number(ORDERS)].to_numpy(dtype=np.float64),
        frame[_number(HOURS)].to_numpy(dtype=np.float64),
        ignored,
        set_aside,
    )


def usable_rows(data: bytes) -> Optional[ValidTranche]:
    """Leniently, the rows that break no row rule (for drift); None if the file is unusable."""
    try:
        read = _read(data)
    except DataContractError:
        return None
    prepared = _prepare(read.frame)
    checked = _check(prepared, ContractOptions(min_rows=0, max_hours=float("inf")))
    return _tranche(prepared[checked.clean], read.ignored_columns)
