"""The report of a train_model run: one self-contained HTML page and its JSON twin.

train_model fills a :class:`RunRecord` as it goes; whatever the outcome, once a
tranche was read, :func:`write_report` renders the record to
``reports/<tranche stem>/<run id>.html`` and ``.json`` in the store. Figures are
drawn with matplotlib (Agg, no pyplot state) and embedded as base64 PNG, and the
page has no script, font, stylesheet or image from elsewhere, so it opens offline.
Writing the report never changes the run's outcome: any failure is one warning.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import (
    TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple,
)

import numpy as np
import numpy.typing as npt

from pipeline.artefacts import create_once, tranche_name
from pipeline.metadata import ByCode, Metadata, Realised, Scores
from pipeline.model_format import DispatchModel
from pipeline.training.gates import BASELINE_NAMES
from pipeline.training.listing import counts_summary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pipeline.store import Store

REPORTS_PREFIX = "reports/"
PUBLISHED = "published"
KEPT = "kept"
REJECTED = "rejected"
UNCHANGED = "unchanged"
FAILED = "failed"
MAX_POINTS_PER_CODE = 1500
# Per-code figures draw the codes with the most rows and those with the worst held-out MAE, and
# per-code tables list as many of each: the page costs the same at 5 or 100,000 codes (every
# code stays in the JSON twin).
MAX_CODES_DRAWN = 12
MAX_WORST_DRAWN = 4
MAX_CODES_TABLED = 20
# A code's held-out MAE on fewer rows is too noisy to call it one of the worst.
MIN_ROWS_WORST = 5
DRIFT_BINS = 30
FloatArray = npt.NDArray[np.float64]

log = logging.getLogger("train_model.report")


@dataclass(frozen=True)
class Points:
    """Rows of a tranche as plain arrays: each row's product code, orders placed and hours."""

    codes: npt.NDArray[np.str_]
    orders: FloatArray
    hours: FloatArray

    def of_code(self, code: str) -> Tuple[FloatArray, FloatArray]:
        """The orders and hours of one product code's rows."""
        mask = self.codes == code
        return self.orders[mask], self.hours[mask]

    def code_counts(self) -> Dict[str, int]:
        """Rows per product code."""
        names, counts = np.unique(self.codes, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}


def new_run_id(started_at: datetime) -> str:
    """A run id: UTC start time and a random suffix, unique per run."""
    return f"{started_at.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


@dataclass
class RunRecord:
    """What a train_model run learned, filled in as it goes; the report is drawn from it."""

    store_url: str
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    run_id: str = ""
    tranche_key: Optional[str] = None
    tranche_location: Optional[str] = None
    tranche_sha256: Optional[str] = None
    points: Optional[Points] = None
    previous_key: Optional[str] = None
    previous_points: Optional[Points] = None
    violations: List[Dict[str, Any]] = field(default_factory=list)
    drift: Optional[Dict[str, Any]] = None
    held_out: Optional[Dict[str, Any]] = None
    decisions: List[Dict[str, Any]] = field(default_factory=list)
    live_version: Optional[str] = None
    live_model: Optional[DispatchModel] = None
    live_metadata: Optional[Metadata] = None
    new_model: Optional[DispatchModel] = None
    realised: Optional[Realised] = None
    outcome: str = FAILED
    summary: str = ""
    exit_status: Optional[int] = None
    model_version: Optional[str] = None
    history: List[Dict[str, Any]] = field(default_factory=list)
    history_left_out: List[Dict[str, Any]] = field(default_factory=list)
    pooling: Optional[Dict[str, Any]] = None
    quarantine: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        if not self.run_id:
            self.run_id = new_run_id(self.started_at)

    def report_keys(self) -> Tuple[str, str]:
        """The HTML and JSON keys of this run's report (None-safe before a tranche is read)."""
        base = f"{REPORTS_PREFIX}{tranche_name(self.tranche_key or 'no-tranche')}/{self.run_id}"
        return f"{base}.html", f"{base}.json"


# ---------------------------------------------------------------------------------------------
# Figures
#
# Every figure is as wide as the page's column (FIGURE_PIXELS), so the browser shows it at 1:1,
# never shrunk, and its text is at least MIN_FONT_POINTS (14 px at 100 dpi): readable on a
# 1280 px screen. Constrained layout keeps titles, labels and legends apart; a figure's caption
# is a line of the page under its heading, never drawn over the figure's titles.

FIGURE_DPI = 100
FIGURE_PIXELS = 1100
MIN_FONT_POINTS = 10
FONTS = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 12}
PANEL_HEIGHT = 3.2  # inches per row of curve panels
BAND_ALPHA = 0.3


class Drawn(NamedTuple):
    """A figure and the caption the page prints under its heading."""

    figure: "Figure"
    caption: str


Draw = Callable[["RunRecord"], Optional[Drawn]]


def _fonts(draw: Draw) -> Draw:
    """A figure function that draws with the report's font sizes."""
    @functools.wraps(draw)
    def drawing(record: RunRecord) -> Optional[Drawn]:
        import matplotlib

        with matplotlib.rc_context(FONTS):
            return draw(record)

    return drawing


def _figure(height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(FIGURE_PIXELS / FIGURE_DPI, height), dpi=FIGURE_DPI,
                  layout="constrained")


def _png(figure: "Figure") -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _label(text: str) -> str:
    """Text shown literally by matplotlib (a '$' would start mathtext)."""
    return text.replace("$", r"\$")


def _sample(orders: FloatArray, hours: FloatArray, limit: int) -> Tuple[FloatArray, FloatArray]:
    if len(orders) <= limit:
        return orders, hours
    keep = np.sort(np.random.default_rng(0).choice(len(orders), limit, replace=False))
    return orders[keep], hours[keep]


def worst_codes(held_out: Optional[Dict[str, Any]], limit: int) -> List[str]:
    """The codes of highest held-out MAE (on at least MIN_ROWS_WORST rows), worst first."""
    per_code = (held_out or {}).get("per_product_code", {})
    judged = sorted((-float(m["mae"]), str(code)) for code, m in per_code.items()
                    if int(m.get("rows", 0)) >= MIN_ROWS_WORST)
    return [code for _, code in judged[:limit]]


def drawn_codes(
    codes: Sequence[str], rows: Dict[str, int], worst: Sequence[str] = ()
) -> List[str]:
    """The codes a per-code figure draws: all of a few, else the busiest and a few ``worst``."""
    if len(codes) <= MAX_CODES_DRAWN:
        return sorted(codes)
    present = set(codes)
    chosen = [code for code in worst if code in present][:MAX_WORST_DRAWN]
    busiest = sorted(set(codes) - set(chosen), key=lambda code: (-rows.get(code, 0), code))
    return sorted(busiest[:MAX_CODES_DRAWN - len(chosen)] + chosen)


def _which(drawn: int, total: int) -> str:
    """The caption's note when a per-code figure draws only some codes."""
    if drawn >= total:
        return ""
    return (f" {drawn} of {total:,} product codes: those with the most rows and the worst "
            f"held-out MAE (the JSON twin has every code).")


def _curve(
    ax: Any, model: Optional[DispatchModel], code: str, grid: FloatArray, name: str, live: bool
) -> None:
    """A model's estimate for a code and, up to its p90 bound, the band the service describes."""
    if model is None or code not in model.curves:
        return
    estimate, upper, _ = model.predict_bounded([code] * len(grid), grid)
    colour = "#d95f02" if live else "#1b6ca8"
    ax.plot(grid, estimate, "--" if live else "-", color=colour, linewidth=2,
            label=f"{name}: estimate")
    if upper is None:
        return
    if live:
        ax.plot(grid, upper, ":", color=colour, linewidth=1.5, label=f"{name}: p90 bound")
    else:
        ax.fill_between(grid, estimate, upper, color=colour, alpha=BAND_ALPHA, linewidth=0,
                        label=f"{name}: up to the p90 bound")


@_fonts
def curves_figure(record: RunRecord) -> Optional[Drawn]:
    """Per product code: the tranche's points, the new model's estimate with the band up to its
    p90 bound (what the service answers), and the live model's estimate and bound."""
    points = record.points
    if points is None or len(points.codes) == 0:
        return None
    counts = points.code_counts()
    codes = drawn_codes(list(counts), counts, worst_codes(record.held_out, MAX_WORST_DRAWN))
    columns = min(3, len(codes))
    rows = (len(codes) + columns - 1) // columns
    figure = _figure(PANEL_HEIGHT * rows + 0.6)
    axes = figure.subplots(rows, columns, squeeze=False)
    for position, code in enumerate(codes):
        ax = axes[position // columns][position % columns]
        orders, hours = points.of_code(code)
        shown_x, shown_y = _sample(orders, hours, MAX_POINTS_PER_CODE)
        ax.scatter(shown_x, shown_y, s=6, alpha=0.35, color="#7a7a7a", label="tranche rows")
        grid = np.linspace(0.0, float(orders.max()) * 1.05 if len(orders) else 1.0, 200)
        _curve(ax, record.new_model, code, grid, "new model", live=False)
        _curve(ax, record.live_model, code, grid, "live model", live=True)
        ax.set_title(_label(f"{code} ({len(orders)} rows)"))
        ax.set_xlabel("orders_placed")
        ax.set_ylabel("hours_to_dispatch")
    for position in range(len(codes), rows * columns):
        axes[position // columns][position % columns].set_visible(False)
    handles: Dict[str, Any] = {}
    for ax in figure.axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    figure.legend(list(handles.values()), list(handles), loc="outside upper center",
                  ncols=min(len(handles), 3))
    caption = ("Points: the tranche's rows. Line: the new model's estimate "
               "(est_hours_to_dispatch); band: from it up to its p90 bound "
               "(p90_hours_to_dispatch, within which 90% of orders are dispatched): the two "
               "numbers the service answers."
               + (f" Dashed and dotted: the live model's ({record.live_version})."
                  if record.live_model is not None else "")
               + _which(len(codes), len(counts)))
    return Drawn(figure, caption)


@_fonts
def accuracy_figure(record: RunRecord) -> Optional[Drawn]:
    """Per product code: new model's held-out MAE, live model's promised and realised MAE."""
    series: List[Tuple[str, Dict[str, float]]] = []
    if record.held_out:
        series.append(("new model, held-out", _maes(record.held_out)))
    if record.live_metadata is not None:
        promised = record.live_metadata.metrics.held_out
        if promised.model_fields_set:
            series.append(("live model, promised (held-out)",
                           _scored_maes(promised.per_product_code, promised.overall.mae)))
    if record.realised is not None:
        series.append(("live model, realised on this tranche",
                       _scored_maes(record.realised.per_product_code, record.realised.mae)))
    if not series:
        return None
    every = sorted({c for _, values in series for c in values if c != "overall"})
    counts = record.points.code_counts() if record.points is not None else {}
    codes = drawn_codes(every, counts, worst_codes(record.held_out, MAX_WORST_DRAWN)) + ["overall"]
    figure = _figure(4.4)
    ax = figure.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(codes))
    for i, (name, values) in enumerate(series):
        heights = [values.get(c, np.nan) for c in codes]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
    ax.set_xticks(x, [_label(c) for c in codes], rotation=90 if len(codes) > 8 else 0)
    ax.set_ylabel("MAE (hours)")
    figure.legend(loc="outside upper center", ncols=len(series))
    caption = ("Mean absolute error per product code"
               + (f"; the live model is {record.live_version}." if record.live_version else ".")
               + _which(len(codes) - 1, len(every)))
    return Drawn(figure, caption)


def _maes(evaluation: Dict[str, Any]) -> Dict[str, float]:
    values = {str(k): float(v["mae"]) for k, v in evaluation.get("per_product_code", {}).items()}
    overall = evaluation.get("overall")
    if isinstance(overall, dict) and overall.get("mae") is not None:
        values["overall"] = float(overall["mae"])
    return values


def _scored_maes(per_code: ByCode[Scores], overall: Optional[float]) -> Dict[str, float]:
    """Recorded MAE per product code and overall (codes or overall without one left out)."""
    values = {code: scores.mae for code, scores in per_code.items() if scores.mae is not None}
    return values if overall is None else {**values, "overall": overall}


@_fonts
def drift_figure(record: RunRecord) -> Optional[Drawn]:
    """Each feature's distribution in the previous tranche and this one, overlaid."""
    now, before = record.points, record.previous_points
    if now is None or before is None or len(before.codes) == 0:
        return None
    psi = (record.drift or {}).get("psi", {})
    figure = _figure(3.8)
    axes = figure.subplots(1, 3)
    for ax, name, a, b in ((axes[0], "orders_placed", before.orders, now.orders),
                           (axes[1], "hours_to_dispatch", before.hours, now.hours)):
        both = np.concatenate([a, b])
        edges = np.linspace(float(both.min()), float(both.max()) or 1.0, DRIFT_BINS + 1)
        for sample, label in ((a, "previous tranche"), (b, "this tranche")):
            density, _ = np.histogram(sample, bins=edges, density=True)
            ax.stairs(density, edges, fill=True, alpha=0.45, label=label)
        ax.set_title(f"{name} (PSI {psi.get(name, float('nan')):.3f})")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    shares_a, shares_b = before.code_counts(), now.code_counts()
    codes = sorted(set(shares_a) | set(shares_b))
    if len(codes) > MAX_CODES_DRAWN:
        _share_by_rank(axes[2], shares_a, shares_b)
    else:
        x = np.arange(len(codes))
        total_a, total_b = max(sum(shares_a.values()), 1), max(sum(shares_b.values()), 1)
        axes[2].bar(x - 0.2, [shares_a.get(c, 0) / total_a for c in codes], 0.4, alpha=0.7,
                    label="previous tranche")
        axes[2].bar(x + 0.2, [shares_b.get(c, 0) / total_b for c in codes], 0.4, alpha=0.7,
                    label="this tranche")
        axes[2].set_xticks(x, [_label(c) for c in codes], rotation=90)
    axes[2].set_title(f"product_code share (PSI {psi.get('product_code', float('nan')):.3f})")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncols=2)
    return Drawn(figure, "Each feature in the previous tranche and in this one (densities).")


def _share_by_rank(ax: Any, before: Dict[str, int], now: Dict[str, int]) -> None:
    """Many codes' shares as one curve per tranche: share of rows against the code's rank."""
    for counts, label in ((before, "previous tranche"), (now, "this tranche")):
        values = np.sort(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))[::-1]
        values = values[values > 0]
        ax.loglog(np.arange(1, len(values) + 1), values / max(values.sum(), 1.0), label=label)
    ax.set_xlabel(f"product code by rank (of {len(set(before) | set(now)):,})")


@_fonts
def violations_figure(record: RunRecord) -> Optional[Drawn]:
    """Rows breaking each rule of the data contract."""
    counted = [v for v in record.violations if v.get("rows")]
    if not counted:
        return None
    from matplotlib.ticker import MaxNLocator

    figure = _figure(0.45 * len(counted) + 1.4)
    ax = figure.subplots()
    names = [str(v["rule"]) for v in counted]
    ax.barh(np.arange(len(counted)), [int(v["rows"]) for v in counted], color="#c0392b")
    ax.set_yticks(np.arange(len(counted)), [_label(n) for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("rows breaking the rule")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return Drawn(figure, "Rows breaking each rule of the data contract.")


@_fonts
def tail_figure(record: RunRecord) -> Optional[Drawn]:
    """The long tail: parts by their rows in the newest tranche, and accuracy by basis.

    Drawn only when some parts got a pooled curve: without a tail there is nothing to show.
    """
    model = record.new_model
    if (record.points is None or not record.held_out or not record.held_out.get("by_basis")
            or model is None or "pooled" not in model.bases.values()):
        return None
    counts = np.asarray(list(record.points.code_counts().values()), dtype=np.float64)
    by_basis = record.held_out["by_basis"]
    figure = _figure(3.8)
    left, middle, right = figure.subplots(1, 3)
    edges = np.unique(np.geomspace(1.0, max(float(counts.max()), 2.0) + 1.0, 20).round())
    left.hist(counts, bins=edges, color="#4169e1")
    left.set_xscale("log")
    left.set_xlabel("rows in the newest tranche")
    left.set_ylabel("parts")
    left.set_title("Rows per part")
    names = list(by_basis)
    for ax, key, title in ((middle, "mae", "held-out MAE (h)"),
                           (right, "coverage_p90", "held-out p90 coverage")):
        values = [float(by_basis[b].get(key) or 0.0) if by_basis[b]["rows"] else np.nan
                  for b in names]
        ax.bar(np.arange(len(names)), values, color=["#2e8b57", "#b8860b"][:len(names)])
        ax.set_xticks(np.arange(len(names)), [f"{b}\n{by_basis[b]['rows']} rows" for b in names])
        ax.set_title(title)
        if key == "coverage_p90":
            ax.axhline(0.9, color="#888", linewidth=0.8, linestyle="--")
            ax.set_ylim(0.0, 1.0)
    return Drawn(figure, "Parts by their rows in the newest tranche; held-out MAE and p90 "
                         "coverage by basis (dashed: the 90% the bound aims at).")


FIGURES = (
    ("violations", "Rows breaking each rule", violations_figure),
    ("curves", "The tranche and the curves per product code", curves_figure),
    ("accuracy", "Held-out and realised accuracy", accuracy_figure),
    ("tail", "The long tail: rows per part and accuracy by basis", tail_figure),
    ("drift", "Drift against the previous tranche", drift_figure),
)


# ---------------------------------------------------------------------------------------------
# The JSON twin and the page


def report_data(record: RunRecord, figures: Sequence[str]) -> Dict[str, Any]:
    """The JSON twin: everything the page shows, as data."""
    live_promised = None if record.live_metadata is None else record.live_metadata.heldout_mae
    points = record.points
    return {
        "run_id": record.run_id,
        "started_at": record.started_at.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "store": record.store_url,
        "outcome": record.outcome,
        "summary": record.summary,
        "exit_status": record.exit_status,
        "model_version": record.model_version,
        "tranche": {
            "key": record.tranche_key, "location": record.tranche_location,
            "sha256": record.tranche_sha256,
            "rows": None if points is None else int(len(points.codes)),
            "per_product_code": None if points is None else points.code_counts(),
        },
        "contract": {"passed": not record.violations and points is not None,
                     "violations": record.violations},
        "held_out": record.held_out,
        "gates": record.decisions,
        "drift": record.drift,
        "live_model": None if record.live_version is None else {
            "model_version": record.live_version,
            "heldout_mae": live_promised,
            "realised": None if record.realised is None else record.realised.to_data(),
        },
        "figures": list(figures),
        "history": record.history,
        "history_left_out": record.history_left_out,
        "pooling": record.pooling,
        "bases": _bases(record.new_model),
        "quarantine": record.quarantine,
    }


def _bases(model: Optional[DispatchModel]) -> Optional[Dict[str, int]]:
    """Parts per basis of the new model (None without a model or bases)."""
    if model is None or not model.bases:
        return None
    names, counts = np.unique(list(model.bases.values()), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:1.6rem;
border-bottom:1px solid #ddd}
.outcome{padding:.7rem 1rem;border-radius:6px;font-size:1.05rem;margin:1rem 0}
.published{background:#e3f4e8;border-left:6px solid #2e8b57}
.kept{background:#eef2fa;border-left:6px solid #4169e1}
.unchanged{background:#f3f3f3;border-left:6px solid #888}
.rejected,.failed{background:#fbe9e7;border-left:6px solid #c0392b}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f6f6}.meta{color:#666;font-size:.85rem}img{max-width:100%;display:block}
.caption{color:#444;font-size:.95rem;margin:.4rem 0}
.PASS,.pass{color:#2e8b57}.WARN,.warn{color:#b8860b}.FAIL,.fail{color:#c0392b;font-weight:bold}
code{font-size:.85rem}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return _e(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else _fmt(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(
    data: Dict[str, Any], images: Dict[str, str], captions: Optional[Dict[str, str]] = None
) -> str:
    """The page: outcome first, then what the data team and the ML engineers look for."""
    tranche = data["tranche"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>train_model {_e(data['outcome'])}: {_e(tranche['key'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>train_model run {_e(data['run_id'])}</h1>",
        f"<p class='meta'>store {_e(data['store'])} &middot; started {_e(data['started_at'])}"
        f" &middot; exit status {_e(data['exit_status'])}</p>",
        f"<div class='outcome {_e(data['outcome'])}' id='outcome'><strong>"
        f"{_e(data['outcome'].upper())}</strong>: {_e(data['summary'])}</div>",
        "<h2>Tranche</h2>",
        _table(["key", "sha256", "rows", "rows per product code"], [[
            tranche["key"], (tranche["sha256"] or "")[:16] + "...", tranche["rows"],
            counts_summary(tranche["per_product_code"]) if tranche["per_product_code"] else "-",
        ]]),
    ]
    if data.get("history"):
        parts.append("<h2 id='history'>Tranches that fed the model</h2>")
        parts.append(_table(["key", "sha256", "rows", "newest"], [
            [h["key"], h["sha256"][:16] + "...", h["rows"], h["newest"]] for h in data["history"]
        ] + [[h["key"], "-", "left out: " + h["reason"], False]
             for h in data.get("history_left_out") or []]))
    quarantine = data.get("quarantine") or {}
    if quarantine.get("tranches"):
        parts.append("<h2 id='quarantine'>Rows set aside</h2>")
        parts.append(f"<p>{_e(quarantine['rows_set_aside'])} row(s) broke a row rule of the data "
                     f"contract and were set aside: at most {_e(quarantine['max_bad_row_share'])}"
                     " of a tranche's rows may be (one row in any tranche). Each is kept in the "
                     "store with the rules it broke and its line in the tranche.</p>")
        parts.append(_table(["tranche", "data rows", "set aside", "rules broken", "kept in"], [
            [t["key"], t["rows_read"], t["rows_set_aside"],
             ", ".join(f"{rule} ({n})" for rule, n in t["rules"].items()), t["quarantine"]]
            for t in quarantine["tranches"]]))
    contract = data["contract"]
    if contract["violations"]:
        parts.append("<h2 id='contract'>Data contract: broken rules</h2>")
        parts.append("<p>Every rule the tranche breaks, with the number of rows and example "
                     "lines (line numbers as in the file, the header being line 1).</p>")
        rows = []
        for v in contract["violations"]:
            examples = "<br>".join(
                f"line {_e(x['line'])}: "
                + _e(", ".join(f"{k}={val!r}" for k, val in x["values"].items()))
                for x in v.get("examples", [])
            )
            rows.append([f"<code>{_e(v['rule'])}</code>", _e(v["description"]),
                         _e(v.get("rows") or "-"), examples or "-"])
        parts.append(_table(["rule", "what it demands", "rows", "examples"], rows, raw=True))
    for name, title, _ in FIGURES:
        if name in images:
            caption = (captions or {}).get(name)
            parts.append(f"<h2>{_e(title)}</h2>"
                         + (f"<p class='caption'>{_e(caption)}</p>" if caption else "")
                         + f"<img data-figure='{name}' alt='{_e(title)}' "
                         f"src='data:image/png;base64,{images[name]}'>")
            if name == "accuracy":
                parts.append(_accuracy_tables(data))
            if name == "tail" and data["held_out"]:
                by_basis = data["held_out"]["by_basis"]
                baselines = data["held_out"].get("baselines") or {}
                parts.append(_table(["basis", "parts", "held-out rows", "MAE (h)", "R²",
                                     "p90 coverage"] + [
                    f"MAE of {BASELINE_NAMES.get(n, n)[len('the '):]} (h)" for n in baselines], [
                    [b, (data.get("bases") or {}).get(b, 0), m["rows"], m["mae"], m["r2"],
                     m.get("coverage_p90")] + [
                        (found.get("by_basis") or {}).get(b, {}).get("mae")
                        for found in baselines.values()]
                    for b, m in by_basis.items()]))
            if name == "drift" and data.get("drift"):
                drift = data["drift"]
                parts.append(_table(["feature", "PSI", "drifted (> threshold)"], [
                    [k, v, k in drift.get("drifted", [])] for k, v in drift["psi"].items()
                ]))
    if "accuracy" not in images and (data["held_out"] or data["live_model"]):
        parts.append("<h2>Accuracy</h2>" + _accuracy_tables(data))
    if data.get("drift") and "drift" not in images:
        parts.append(f"<h2>Drift</h2><p>{_e(data['drift'].get('note') or 'not measured')}</p>")
    if data["gates"]:
        parts.append("<h2 id='gates'>Gate decisions (champion vs challenger included)</h2>")
        parts.append(_table(["gate", "outcome", "detail"], [
            [f"<code>{_e(d['gate'])}</code>", f"<span class='{_e(d['outcome'])}'>"
             f"{_e(d['outcome'])}</span>", _e(d["detail"])] for d in data["gates"]
        ], raw=True))
    parts.append("<p class='meta'>The JSON twin of this page sits beside it "
                 "(same key, <code>.json</code>).</p></body></html>")
    return "\n".join(parts)


def _accuracy_tables(data: Dict[str, Any]) -> str:
    parts = []
    held = data.get("held_out")
    if held:
        per_code = held.get("per_product_code", {})
        shown, which = _tabled_codes(held), ""
        if len(shown) < len(per_code):
            which = (f" Of {len(per_code):,} product codes, the {MAX_CODES_TABLED} with the most "
                     f"held-out rows and the {MAX_CODES_TABLED} with the highest MAE (on at least "
                     f"{MIN_ROWS_WORST} rows); the JSON twin has every code.")
        rows = [[code, m["rows"], m["mae"], m["r2"], m.get("coverage_p90")]
                for code, m in ((c, per_code[c]) for c in shown)]
        overall = held["overall"]
        rows.append(["overall", overall["rows"], overall["mae"], overall["r2"],
                     overall.get("coverage_p90")])
        for name, found in (held.get("baselines") or {}).items():
            peer = found["overall"]
            rows.append([f"baseline: {BASELINE_NAMES.get(name, name)}", peer["rows"],
                         peer["mae"], peer["r2"], None])
        parts.append("<p>New model on the held-out rows (coverage: the share dispatched within "
                     "its p90 bound), and the baselines it must match on the same rows (fitted "
                     f"on the rows the model was fitted on).{_e(which)}</p>"
                     + _table(["product code", "rows", "MAE (h)", "R²", "p90 coverage"], rows))
    live = data.get("live_model")
    if live:
        realised = live.get("realised")
        if realised:
            words = (f"Live model {_e(live['model_version'])} on all {_e(realised['rows_scored'])}"
                     f" rows of this tranche (it never saw them): realised MAE "
                     f"<strong>{_fmt(realised['mae'])} h</strong>, against the "
                     f"{_fmt(live['heldout_mae'])} h it promised when it was trained.")
        else:
            words = (f"Live model {_e(live['model_version'])} (promised MAE "
                     f"{_fmt(live['heldout_mae'])} h): realised accuracy not measured on this "
                     f"tranche.")
        parts.append(f"<p id='realised'>{words}</p>")
    return "".join(parts)


def _tabled_codes(held_out: Dict[str, Any]) -> List[str]:
    """The codes a per-code table lists: all of a few, else the busiest and the worst."""
    per_code = held_out.get("per_product_code", {})
    if len(per_code) <= 2 * MAX_CODES_TABLED:
        return list(per_code)
    busiest = sorted(per_code, key=lambda code: (-int(per_code[code]["rows"]), code))
    chosen = set(busiest[:MAX_CODES_TABLED]) | set(worst_codes(held_out, MAX_CODES_TABLED))
    return [code for code in per_code if code in chosen]


def build_report(record: RunRecord) -> Tuple[str, Dict[str, Any]]:
    """The page and its JSON twin for a run record."""
    images: Dict[str, str] = {}
    captions: Dict[str, str] = {}
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        log.warning("report drawn without figures: %s", exc)
        return render_html(report_data(record, []), images), report_data(record, [])
    for name, _, draw in FIGURES:
        try:
            drawn = draw(record)
            if drawn is not None:
                images[name], captions[name] = _png(drawn.figure), drawn.caption
        except Exception as exc:  # a figure that cannot be drawn must not lose the report
            log.warning("report figure %s not drawn: %s", name, exc)
    data = report_data(record, list(images))
    return render_html(data, images, captions), data


def write_report(store: "Store", record: RunRecord) -> Optional[str]:
    """Render and write the run's report; a failure is a warning, never an error."""
    html_key, json_key = record.report_keys()
    try:
        page, data = build_report(record)
        create_once(store, json_key, json.dumps(data, indent=2, sort_keys=True).encode())
        create_once(store, html_key, page.encode("utf-8"))
    except Exception as exc:  # the report must never change the run's outcome
        log.warning("run report not written (%s): %s", store.location(html_key), exc)
        return None
    log.info("run report: %s", store.location(html_key))
    return html_key
