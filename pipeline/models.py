"""The operator's command: list published models, show one, roll back to one.

Run as ``python -m pipeline.models STORE list|show|rollback ...``. ``STORE`` and the
AWS handling are the stages' (a path, ``file://`` URL or ``s3://bucket[/prefix]``).
Every failure is one plain ERROR line on stderr and an exit status listed in ``--help``.
"""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from pipeline import artefacts, history
from pipeline.artefacts import tranche_timestamp
from pipeline.metadata import Realised, Scores
from pipeline.model_format import BASES
from pipeline.store import (
    DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_SECONDS, ObjectNotFound, Store, StoreError, open_store,
)

EXIT_OK = 0
EXIT_STORE = 3
EXIT_UNKNOWN = 4
EXIT_CORRUPT = 5
EXIT_MOVED = 7
# A catalogue of 100,000 parts is not read line by line: `show` lists the busiest parts and says
# how many more there are (`show --json` has them all).
SHOWN_CODES = 20

log = logging.getLogger("models")


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _minute(record: Dict[str, Any]) -> str:
    return str(record.get("at", ""))[:16].replace("T", " ")


def _how(entry: history.ModelEntry) -> str:
    parts = []
    if entry.live:
        parts.append(f"live ({entry.live_by})")
    for record in entry.rollbacks:
        parts.append(f"rolled back to {_minute(record)} by {record.get('by')}")
    for record in entry.rollbacks_from:
        parts.append(f"rolled back from {_minute(record)} by {record.get('by')}")
    if not entry.published:
        parts.append("never published (lost the pointer race, or its run was stopped first)")
    return "; ".join(parts) or "-"


def list_text(found: history.History) -> str:
    """The list as an aligned table, newest first, the live model marked with '*'."""
    header = ["", "VERSION", "CREATED (UTC)", "TRANCHE", "ROWS", "HELD-OUT MAE", "REALISED MAE",
              "LIVE / ROLLBACKS"]
    rows = [header]
    for entry in found.models:
        data = entry.to_dict()
        rows.append([
            "*" if entry.live else "", entry.version, entry.created_at[:19].replace("T", " "),
            history.tranche_stem(data["tranche_key"] or "-"), str(data["rows"] or "-"),
            _number(data["heldout_mae"]), _number(data["realised_mae"]), _how(entry),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if not found.models:
        lines.append("(no published model)")
    if found.unreadable:
        lines.append(f"unreadable metadata (not listed): {', '.join(found.unreadable)}")
    return "\n".join(lines)


def _exists(store: Store, key: str) -> bool:
    try:
        store.read_bytes(key)
    except ObjectNotFound:
        return False
    return True


def metrics_text(scores: Scores) -> str:
    """``MAE 0.4022 h, R² 0.9863, p90 coverage 0.880 on 200 rows`` (what the scores hold)."""
    if not scores.rows:
        return "no rows"
    parts = [f"MAE {_number(scores.mae)} h"]
    if scores.r2 is not None:
        parts.append(f"R² {_number(scores.r2)}")
    if scores.coverage_p90 is not None:
        parts.append(f"p90 coverage {scores.coverage_p90:.3f}")
    return f"{', '.join(parts)} on {scores.rows} rows"


def by_basis_text(by_basis: Mapping[str, Scores]) -> Optional[str]:
    """``product: <metrics>; pooled: <metrics>``, or None for a model without bases."""
    if not by_basis:
        return None
    order = sorted(by_basis, key=lambda b: (BASES.index(b) if b in BASES else len(BASES), b))
    return "; ".join(f"{basis}: {metrics_text(by_basis[basis])}" for basis in order)


def realised_lines(entry: history.ModelEntry) -> List[str]:
    """One line per later tranche the model was scored on, oldest first, with its basis split."""
    def when(record: Realised) -> Any:
        key = record.tranche.key or ""
        return (str(tranche_timestamp(key) or ""), key)

    lines = []
    for record in sorted(entry.realised, key=when):
        overall = Scores(rows=record.rows_scored, mae=record.mae, r2=record.r2)
        split = by_basis_text(record.by_basis)
        lines.append(f"    {history.tranche_stem(record.tranche.key or '-')}"
                     f"  {metrics_text(overall)}" + (f"; by basis: {split}" if split else ""))
    return lines


def busiest(codes: Iterable[str], rows: Mapping[str, int]) -> List[str]:
    """The SHOWN_CODES codes with the most rows (ties by code), busiest first."""
    return sorted(codes, key=lambda code: (-rows.get(code, 0), code))[:SHOWN_CODES]


def rows_text(per_code: Dict[str, int]) -> str:
    """Rows per product code as JSON; beyond SHOWN_CODES codes, the busiest and how many more."""
    if len(per_code) <= SHOWN_CODES:
        return json.dumps(per_code)
    busiest_rows = {code: per_code[code] for code in busiest(per_code, per_code)}
    return (f"{json.dumps(busiest_rows)} and {len(per_code) - SHOWN_CODES:,} more product codes "
            f"({len(per_code):,} in all)")


def show_text(store: Store, entry: history.ModelEntry) -> str:
    """One model's metadata in plain lines: its metrics overall, by basis and per code, its
    realised accuracy on later tranches, gates, drift, rollbacks and where its report is."""
    meta = entry.metadata
    data = entry.to_dict()
    held = meta.metrics.held_out
    lines = [
        f"model {entry.version}{'  (live, ' + str(entry.live_by) + ')' if entry.live else ''}",
        f"  created at       {entry.created_at}",
        f"  trained on       {data['tranche_key']} (sha256 {meta.tranche.sha256})",
        f"  rows             {rows_text(meta.rows.per_product_code)} total {data['rows']}",
        f"  held-out         {metrics_text(held.overall)}",
    ]
    split = by_basis_text(held.by_basis)
    if split:
        lines.append(f"    by basis       {split}")
    per_code = held.per_product_code
    rows = meta.rows.per_product_code
    shown = busiest(per_code, rows)
    for code in sorted(shown):
        values = per_code.get(code)
        if values is not None:
            lines.append(f"    {code:<14} {metrics_text(values)}")
    if len(per_code) > len(shown):
        lines.append(f"    ... and {len(per_code) - len(shown):,} more product codes (the "
                     f"{len(shown)} with the most rows are shown; --json has every one)")
    lines.append(f"  realised MAE     {_number(data['realised_mae'])}"
                 + (" (on the first tranche after its own)" if data["realised_mae"] is not None
                    else " (no later tranche yet)"))
    if entry.realised:
        lines.append("  realised on later tranches (all their rows, which it never saw):")
        lines.extend(realised_lines(entry))
    previous = meta.previous_model
    if previous is not None:
        lines.append(f"  replaced         {previous.model_version} (held-out MAE "
                     f"{_number(previous.heldout_mae)}, realised MAE on this tranche "
                     f"{_number(previous.realised_mae)})")
    for gate in meta.gates:
        lines.append(f"  gate {gate.gate}: {gate.outcome}: {gate.detail}")
    drift = meta.drift
    if drift.model_fields_set:
        psi = ", ".join(f"{k} {v}" for k, v in drift.psi.items())
        against = f" against {drift.previous_tranche}" if drift.previous_tranche else ""
        lines.append(f"  drift (PSI)      {psi or drift.note}{against}")
    for record in entry.rollbacks:
        lines.append(f"  rolled back to   at {record.get('at')} by {record.get('by')} from "
                     f"{(record.get('from') or {}).get('model_version')}: {record.get('reason')}")
    for record in entry.rollbacks_from:
        lines.append(f"  rolled back from at {record.get('at')} by {record.get('by')} to "
                     f"{(record.get('to') or {}).get('model_version')}: {record.get('reason')}")
    if entry.rollbacks_from:
        lines.append(f"  held             train_model publishes nothing on its tranche "
                     f"{history.tranche_stem(data['tranche_key'] or '-')} (these bytes) again: "
                     f"a new tranche or --force retrains")
    lines.append(f"  metadata         {store.location(artefacts.metadata_key(entry.version))}")
    report = meta.report
    if report is not None and report.html:
        where = store.location(report.html)
        missing = "" if _exists(store, report.html) else " (missing: it was not written)"
        lines.append(f"  report           {where}{missing}")
    else:
        lines.append("  report           none recorded")
    return "\n".join(lines)


def operator_name() -> str:
    """The user running the command, or 'unknown' when the system cannot say."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="models",
        description="List the published models of STORE, show one, or roll back to one.",
        epilog=f"exit status: {EXIT_OK} done, 2 bad usage, {EXIT_STORE} store unavailable, "
               f"{EXIT_UNKNOWN} unknown version, {EXIT_CORRUPT} version fails verification "
               f"(checksum or format), {EXIT_MOVED} the pointer moved during a rollback",
    )
    parser.add_argument("store", metavar="STORE",
                        help="local directory, file:// URL or s3://bucket[/prefix]")
    parser.add_argument("--store-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS,
                        help="attempts per S3 request")
    parser.add_argument("--store-timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                        help="seconds to connect to or read from S3 before retrying")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="every published model, newest first")
    listing.add_argument("--json", action="store_true", help="a JSON array for scripts")
    show = commands.add_parser("show", help="one model's metadata and where its report is")
    show.add_argument("version", metavar="VERSION")
    show.add_argument("--json", action="store_true", help="the metadata and history as JSON")
    back = commands.add_parser(
        "rollback", help="verify VERSION and make it the live model; recorded in audit/rollbacks/")
    back.add_argument("version", metavar="VERSION")
    back.add_argument("--reason", default="", help="why (recorded)")
    back.add_argument("--by", default=None, help="who (recorded; default: the user name)")
    args = parser.parse_args(argv)
    if args.store_attempts < 1 or not args.store_timeout > 0:
        parser.error("--store-attempts must be at least 1 and --store-timeout positive")
    return args


def run(args: argparse.Namespace) -> int:
    """Do the command; raises the history module's errors or StoreError on refusal."""
    store = open_store(args.store, args.store_attempts, args.store_timeout)
    if args.command == "list":
        found = history.read_history(store)
        if args.json:
            print(json.dumps([m.to_dict() for m in found.models], indent=2))
        else:
            print(list_text(found))
        return EXIT_OK
    if args.command == "show":
        found = history.read_history(store)
        entry = found.find(args.version) if history.valid_version(args.version) else None
        if entry is None:
            raise history.UnknownVersion(
                f"no published model {args.version} in "
                f"{store.location(artefacts.MODELS_PREFIX)}")
        if args.json:
            stored = json.loads(entry.metadata.to_json())  # as stored: keys sorted
            shown: Dict[str, Any] = dict(entry.to_dict(), metadata=stored)
            print(json.dumps(shown, indent=2))
        else:
            print(show_text(store, entry))
        return EXIT_OK
    done = history.rollback(store, args.version, args.reason, args.by or operator_name())
    if done.audit_key is None:
        log.info("model %s is already live; nothing changed", args.version)
        return EXIT_OK
    was = done.previous.model_version if done.previous else "none"
    log.info("rolled back from %s to %s; recorded in %s; services refreshing their model pick it "
             "up at their next poll; train_model publishes nothing on the tranche %s was trained "
             "on until a new tranche arrives (or --force)", was, args.version,
             store.location(done.audit_key), was)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, run, and turn every refusal into one ERROR line and an exit status."""
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    failures: List[Any] = [
        (history.UnknownVersion, EXIT_UNKNOWN, "unknown model version"),
        (history.CorruptVersion, EXIT_CORRUPT, "refused: the model fails verification"),
        (history.PointerMoved, EXIT_MOVED, "refused: the pointer moved meanwhile"),
        (StoreError, EXIT_STORE, "the store is unavailable"),
    ]
    try:
        return run(args)
    except tuple(kind for kind, _, _ in failures) as exc:
        for kind, status, words in failures:
            if isinstance(exc, kind):
                log.error("%s: %s", words, exc)
                return int(status)
        raise


if __name__ == "__main__":
    sys.exit(main())
