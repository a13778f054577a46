"""The data contract a tranche must meet before any training, checked in one pass.

Structural checks (empty, binary, not UTF-8, wrong delimiter, no header, no data
rows, missing columns) come first; then every row rule below is evaluated at once
over the whole file as polars expressions, and every violation is reported
together: which rule, how many rows, and a few example rows with their line
numbers. Numeric columns are read as text and cast leniently, so a value that
is not a number is a violation with examples, never a crash.

Decisions: columns beyond the three required ones are ignored (and reported);
blank lines are skipped; surrounding whitespace is stripped from every value;
product codes are case-sensitive. Line numbers assume no quoted field spans lines.
"""
from __future__ import annotations

import codecs
import csv
import inspect
import io
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import polars as pl

HOURS = "hours_to_dispatch"
ORDERS = "orders_placed"
CODE = "product_code"
REQUIRED_COLUMNS: Tuple[str, ...] = (HOURS, ORDERS, CODE)
DEFAULT_MIN_ROWS = 100
DEFAULT_MAX_HOURS = 1000.0
DEFAULT_EXAMPLES = 3
_LINE = "__line"
_EXTRA = "__extra"
_OTHER_DELIMITERS = (";", "\t", "|")


def _number(column: str) -> str:
    return f"__{column}_number"


def _text(column: str) -> str:
    return f"__{column}_text"


@dataclass(frozen=True)
class ContractOptions:
    """The tunable parts of the contract."""

    min_rows: int = DEFAULT_MIN_ROWS
    max_hours: float = DEFAULT_MAX_HOURS
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


@dataclass(frozen=True)
class RowRule:
    """A declarative row rule: ``flags`` is true on every row that breaks it."""

    name: str
    description: str
    columns: Tuple[str, ...]
    flags: pl.Expr


def row_rules(options: ContractOptions) -> Tuple[RowRule, ...]:
    """The row rules of the contract, as polars expressions over the prepared frame."""
    rules: List[RowRule] = [
        RowRule(
            "extra_fields",
            "a row has more fields than the header",
            (_EXTRA,),
            pl.col(_EXTRA).is_not_null(),
        )
    ]
    for column in REQUIRED_COLUMNS:
        rules.append(
            RowRule(
                f"{column}_missing",
                f"{column} must not be empty or missing",
                (column,),
                pl.col(_text(column)).is_null(),
            )
        )
    for column in (ORDERS, HOURS):
        number = pl.col(_number(column))
        rules += [
            RowRule(
                f"{column}_not_a_number",
                f"{column} must be a number",
                (column,),
                pl.col(_text(column)).is_not_null() & number.is_null(),
            ),
            RowRule(
                f"{column}_not_finite", f"{column} must be finite", (column,),
                ~number.is_finite(),
            ),
            RowRule(
                f"{column}_negative", f"{column} must be >= 0", (column,),
                number.is_finite() & (number < 0),
            ),
        ]
    orders = pl.col(_number(ORDERS))
    hours = pl.col(_number(HOURS))
    rules += [
        RowRule(
            f"{ORDERS}_not_whole",
            f"{ORDERS} must be a whole count",
            (ORDERS,),
            orders.is_finite() & (orders != orders.floor()),
        ),
        RowRule(
            f"{HOURS}_above_max",
            f"{HOURS} must be at most {options.max_hours:g}",
            (HOURS,),
            hours.is_finite() & (hours > options.max_hours),
        ),
    ]
    return tuple(rules)


@dataclass(frozen=True)
class ValidTranche:
    """The rows of a tranche that meet the contract, as arrays ready for the model."""

    product_codes: Tuple[str, ...]
    code_index: npt.NDArray[np.int64]
    orders_placed: npt.NDArray[np.float64]
    hours_to_dispatch: npt.NDArray[np.float64]
    ignored_columns: Tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        """How many rows."""
        return int(len(self.code_index))

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
    frame: pl.DataFrame
    ignored_columns: Tuple[str, ...]


def _structure(data: bytes) -> Tuple[bytes, List[str]]:
    """The CSV body after the header, and the header's names; DataContractError if unusable."""
    if not data.strip():
        raise DataContractError([Violation("file_empty", "the file is empty")])
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
            "no_data_rows", f"the file has a header ({first.strip()!r}) but no data rows"
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
    positional = [f"__c{i}" for i in range(len(names))] + [_EXTRA]
    options: Dict[str, Any] = {}
    if "missing_columns" in inspect.signature(pl.read_csv).parameters:
        options["missing_columns"] = "insert"  # polars >= 2: let the sentinel column be absent
    try:
        raw = pl.read_csv(
            io.BytesIO(body),
            has_header=False,
            skip_rows=1,
            new_columns=positional,
            schema={name: pl.String for name in positional},
            infer_schema=False,
            truncate_ragged_lines=True,
            **options,
        )
    except pl.exceptions.PolarsError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataContractError([Violation(
            "unreadable_csv", f"the file cannot be parsed as CSV: {message}"
        )]) from None
    columns = {name: f"__c{names.index(name)}" for name in REQUIRED_COLUMNS}
    frame = raw.with_row_index(_LINE, offset=2).select(
        [pl.col(_LINE), pl.col(_EXTRA)] + [pl.col(columns[c]).alias(c) for c in REQUIRED_COLUMNS]
    )
    blank = pl.all_horizontal([pl.col(c).is_null() for c in REQUIRED_COLUMNS + (_EXTRA,)])
    frame = frame.filter(~blank)
    ignored = tuple(n for n in names if n not in REQUIRED_COLUMNS)
    return _Read(frame, ignored)


def _prepare(frame: pl.DataFrame) -> pl.DataFrame:
    """Add stripped text (empty -> null) and leniently cast numbers beside the raw columns."""
    texts = [
        pl.col(c).str.strip_chars().replace("", None).alias(_text(c)) for c in REQUIRED_COLUMNS
    ]
    prepared = frame.with_columns(texts)
    return prepared.with_columns([
        pl.col(_text(c)).cast(pl.Float64, strict=False).alias(_number(c)) for c in (ORDERS, HOURS)
    ])


def _examples(
    prepared: pl.DataFrame, flags: pl.Series, rule: RowRule, limit: int
) -> Tuple[Example, ...]:
    shown = [c for c in rule.columns if c != _EXTRA] or [_EXTRA]
    picked = prepared.filter(flags).head(limit).select([_LINE] + shown)
    labels = ["first extra field" if c == _EXTRA else c for c in shown]
    return tuple(
        Example(int(row[0]), tuple(zip(labels, (None if v is None else str(v) for v in row[1:]))))
        for row in picked.iter_rows()
    )


def evaluate(
    prepared: pl.DataFrame, options: ContractOptions
) -> Tuple[Tuple[Violation, ...], pl.Series]:
    """Every rule over every row at once: the violations and a per-row 'breaks nothing' mask."""
    rules = row_rules(options)
    flags = prepared.select([r.flags.fill_null(False).alias(r.name) for r in rules])
    counts = flags.sum().row(0)
    violations: List[Violation] = []
    for rule, count in zip(rules, counts):
        if count:
            examples = _examples(prepared, flags[rule.name], rule, options.examples)
            violations.append(Violation(rule.name, rule.description, int(count), examples))
    clean = ~flags.select(pl.any_horizontal(pl.all())).to_series()
    return tuple(violations), clean


def _tranche(frame: pl.DataFrame, ignored: Tuple[str, ...]) -> ValidTranche:
    codes = frame[_text(CODE)]
    unique = codes.unique().sort()
    index = codes.replace_strict(
        unique, pl.int_range(len(unique), eager=True), return_dtype=pl.Int64
    ).to_numpy()
    return ValidTranche(
        tuple(str(c) for c in unique.to_list()),
        np.ascontiguousarray(index, dtype=np.int64),
        frame[_number(ORDERS)].to_numpy().astype(np.float64),
        frame[_number(HOURS)].to_numpy().astype(np.float64),
        ignored,
    )


def validate_tranche(data: bytes, options: ContractOptions = ContractOptions()) -> ValidTranche:
    """The tranche's rows if the whole file meets the contract; else DataContractError."""
    read = _read(data)
    prepared = _prepare(read.frame)
    violations, _ = evaluate(prepared, options)
    problems = list(violations)
    if prepared.height < options.min_rows:
        problems.append(Violation(
            "too_few_rows",
            f"the tranche has {prepared.height} data rows; at least {options.min_rows} needed",
        ))
    if problems:
        raise DataContractError(problems)
    return _tranche(prepared, read.ignored_columns)


def usable_rows(data: bytes) -> Optional[ValidTranche]:
    """Leniently, the rows that break no row rule (for drift); None if the file is unusable."""
    try:
        read = _read(data)
    except DataContractError:
        return None
    prepared = _prepare(read.frame)
    _, clean = evaluate(prepared, ContractOptions(min_rows=0, max_hours=float("inf")))
    return _tranche(prepared.filter(clean), read.ignored_columns)
