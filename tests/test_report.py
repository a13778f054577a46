"""The report of every train_model run: published, kept and rejected; self-contained; rendered.

The page is parsed (outcome, figures, tables, no external reference) and, when Chromium is
installed, rendered headless: the DOM after load and a screenshot that is not blank.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from pipeline import train_model
from pipeline.simulate import simulate_tranche, tranche_key
from pipeline.store import open_store
from pipeline.training import run as stage_run
from pipeline.training.report import (
    FIGURE_PIXELS, FIGURES, MAX_CODES_DRAWN, MAX_CODES_TABLED, MAX_WORST_DRAWN, MIN_FONT_POINTS,
    REPORTS_PREFIX, Points, RunRecord, build_report, curves_figure, drawn_codes, worst_codes,
)
from tests import browser_support

WEEK = datetime(2026, 11, 6, 23, tzinfo=timezone.utc)


class Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: List[Tuple[str, Dict[str, str]]] = []
        self.text: List[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Any]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str) -> List[Dict[str, str]]:
        return [attrs for name, attrs in self.tags if name == tag]

    @property
    def figures(self) -> List[str]:
        return [a.get("data-figure", "") for a in self.find("img")]

    @property
    def outcome(self) -> str:
        return next(a["class"].split()[1] for a in self.find("div") if a.get("id") == "outcome")


def deliver(url: str, index: int, rows: int = 400, **kwargs: Any) -> str:
    when = (WEEK + timedelta(weeks=index)).isoformat()
    key = tranche_key(when)
    open_store(url).write_bytes(key, simulate_tranche(rows, seed=70 + index, week=index,
                                                      **kwargs).to_csv())
    return key


def reports(url: str) -> List[Tuple[Page, Dict[str, Any], str]]:
    """Every report in the store (oldest run first): the parsed page, its JSON twin, raw HTML."""
    store = open_store(url)
    found = []
    for key in sorted(store.list_keys(REPORTS_PREFIX)):
        if key.endswith(".html"):
            raw = store.read_bytes(key).decode()
            twin = json.loads(store.read_bytes(key[:-len(".html")] + ".json"))
            found.append((Page(raw), twin, raw))
    return sorted(found, key=lambda r: r[1]["started_at"])


def assert_self_contained(page: Page, raw: str) -> None:
    assert page.find("script") == [] and page.find("link") == [] and page.find("iframe") == []
    for attrs in page.tags:
        for name, value in attrs[1].items():
            if name in ("src", "href", "srcset", "action", "poster"):
                assert value.startswith("data:image/png;base64,"), (name, value[:60])
    assert "http://" not in raw and "https://" not in raw and "url(" not in raw
    assert "@import" not in raw and "@font-face" not in raw


def test_published_and_kept_runs_report_curves_accuracy_drift_and_gates(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = deliver(store_url, 0)
    with caplog.at_level(logging.INFO):
        assert train_model.main([store_url]) == 0
    assert any(r.getMessage().startswith("run report: ") for r in caplog.records)
    deliver(store_url, 1)
    # Keep the champion: no tolerance and a challenger fitted on a tenth of the rows (without
    # the history window; with it, the newest tranche would be held out whole).
    assert train_model.main([store_url, "--champion-tolerance", "0", "--test-fraction", "0.9",
                             "--min-rows-per-code", "5", "--history-weeks", "0"]) == 0
    (published, twin1, raw1), (kept, twin2, raw2) = reports(store_url)

    assert published.outcome == "published" and twin1["outcome"] == "published"
    assert twin1["model_version"] and twin1["model_version"] in raw1
    assert twin1["tranche"]["key"] == first and twin1["tranche"]["rows"] == 400
    assert published.figures == ["curves", "accuracy"], "no previous tranche: no drift figure"
    assert twin1["live_model"] is None
    assert {g["gate"] for g in twin1["gates"]} >= {"mae_vs_code_median", "mae_vs_global_median",
                                                   "coverage_p90", "champion", "refit_monotone"}
    coverage = twin1["held_out"]["overall"]["coverage_p90"]
    assert "p90 coverage" in raw1 and f"{coverage:.4f}" in raw1
    for name, words in (("code_median", "per-code median"), ("global_median", "global median")):
        peer = twin1["held_out"]["baselines"][name]["overall"]
        assert peer["rows"] == twin1["held_out"]["overall"]["rows"]
        assert f"baseline: the window&#x27;s {words}" in raw1 and f"{peer['mae']:.4f}" in raw1

    assert kept.outcome == "kept" and "deliberately kept" in twin2["summary"]
    assert kept.figures == ["curves", "accuracy", "drift"]
    assert twin2["figures"] == kept.figures
    realised = twin2["live_model"]["realised"]
    assert twin2["live_model"]["model_version"] == twin1["model_version"]
    assert realised["rows_scored"] == 400 and realised["mae"] > 0
    assert twin2["live_model"]["heldout_mae"] == twin1["held_out"]["overall"]["mae"]
    assert "realised MAE" in raw2 and f"{realised['mae']:.4f}" in raw2
    assert set(twin2["drift"]["psi"]) == {"orders_placed", "hours_to_dispatch", "product_code"}
    champion = [g for g in twin2["gates"] if g["gate"] == "champion"]
    assert champion[0]["outcome"] == "keep"
    for page, raw in ((published, raw1), (kept, raw2)):
        assert_self_contained(page, raw)


def test_a_rejected_tranche_reports_every_broken_rule_with_examples(store_url: str) -> None:
    key = tranche_key(WEEK.isoformat())
    good = simulate_tranche(300, seed=1).to_csv().decode().splitlines()
    lines = good[:10] + ["ten,5,SKU001", "-1,5,SKU002", "3.5,-2,SKU003", "2,,SKU004"] + good[10:]
    open_store(store_url).write_bytes(key, ("\n".join(lines) + "\n").encode())
    assert train_model.main([store_url]) == stage_run.EXIT_BAD_DATA
    [(page, twin, raw)] = reports(store_url)
    assert page.outcome == "rejected" and twin["exit_status"] == stage_run.EXIT_BAD_DATA
    assert "breaks the data contract" in twin["summary"]
    rules = {v["rule"]: v for v in twin["contract"]["violations"]}
    share = rules.pop("too_many_bad_rows")
    assert "4 of the 304 data rows break a row rule; at most 3" in share["description"]
    assert set(rules) == {"hours_to_dispatch_not_a_number", "hours_to_dispatch_negative",
                          "orders_placed_negative", "orders_placed_missing"}
    assert all(v["rows"] == 1 for v in rules.values())
    assert rules["hours_to_dispatch_not_a_number"]["examples"][0]["line"] == 11
    for rule in rules:
        assert rule in raw
    assert "line 11: hours_to_dispatch=&#x27;ten&#x27;" in raw
    assert page.figures == ["violations"]
    assert twin["held_out"] is None and twin["gates"] == []
    assert_self_contained(page, raw)


def test_a_model_rejected_by_the_gates_is_reported_with_its_decisions(store_url: str) -> None:
    deliver(store_url, 0)
    assert train_model.main([store_url, "--mae-max", "0.001", "--mae-warn", "0.001"]) == \
        stage_run.EXIT_GATES
    [(page, twin, raw)] = reports(store_url)
    assert page.outcome == "rejected" and "rejected by the gates" in twin["summary"]
    assert {g["gate"]: g["outcome"] for g in twin["gates"]}["mae"] == "fail"
    assert page.figures == ["curves", "accuracy"]


def test_no_report_without_a_tranche_and_a_failed_report_changes_nothing(
    local_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert train_model.main([local_url]) == stage_run.EXIT_NO_TRANCHE
    assert open_store(local_url).list_keys(REPORTS_PREFIX) == []
    deliver(local_url, 0)
    (Path(local_url) / "reports").write_bytes(b"a file where the reports folder should be")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert train_model.main([local_url]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("run report not written") for m in warnings), warnings
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def rejected_with_points(codes: List[str], rows: int, seed: int) -> RunRecord:
    """A rejected run's record holding ``rows`` random points over the given product codes."""
    rng = np.random.default_rng(seed)
    drawn = np.array(codes)[rng.integers(0, len(codes), rows)]
    orders = rng.uniform(0, 100, rows)
    return RunRecord("memory://", tranche_key="datasets/time_to_dispatch_2026-11-20.csv",
                     points=Points(drawn, orders, orders / 10), outcome="rejected",
                     summary="nothing published: a test")


def test_report_of_a_record_with_a_big_tranche_samples_its_points() -> None:
    page, data = build_report(rejected_with_points(["A", "B"], 200_000, seed=0))
    assert data["figures"] == ["curves"]
    assert len(page) < 400_000


def test_per_code_figures_draw_only_the_busiest_codes_of_many() -> None:
    rows = {f"SKU{i:04d}": 1000 - i for i in range(300)}
    assert drawn_codes(list(rows), rows) == [f"SKU{i:04d}" for i in range(MAX_CODES_DRAWN)]
    assert drawn_codes(["B", "A"], {"A": 1, "B": 1}) == ["A", "B"]
    page, data = build_report(rejected_with_points(list(rows), 30_000, seed=1))
    assert data["figures"] == ["curves"]
    assert len(page) < 400_000, "a figure of 300 panels would not fit"


def catalogue_record(codes: int, seed: int) -> RunRecord:
    """A published run's record over a long-tailed catalogue: points, drift and held-out MAE."""
    names = [f"PART{i:06d}" for i in range(codes)]
    record = rejected_with_points(names, 20 * codes, seed)
    popular = np.array(names)[np.minimum(
        np.random.default_rng(seed).zipf(1.5, 20 * codes) - 1, codes - 1)]
    record.points = Points(popular, record.points.orders, record.points.hours)
    record.previous_key, record.previous_points = "datasets/before.csv", record.points
    record.outcome, record.drift = "published", {"psi": {"product_code": 0.0}, "drifted": []}
    counts = record.points.code_counts()
    record.held_out = {
        "overall": {"rows": 100, "mae": 0.5, "r2": 0.9},
        "per_product_code": {code: {"rows": n, "mae": 0.5 + (i % 97) / 100, "r2": 0.9}
                             for i, (code, n) in enumerate(sorted(counts.items()))},
    }
    return record


def test_the_report_of_a_big_catalogue_draws_and_tables_the_busiest_and_the_worst() -> None:
    record = catalogue_record(5000, seed=3)
    assert record.points is not None and record.held_out is not None
    page, data = build_report(record)
    assert data["figures"] == ["curves", "accuracy", "drift"]
    assert len(data["held_out"]["per_product_code"]) == len(record.points.code_counts()) > 1000
    tabled = [cell for cell in Page(page).text if cell.startswith("PART")]
    assert len(tabled) <= 2 * MAX_CODES_TABLED < 1000
    busiest = max(record.points.code_counts().items(), key=lambda item: item[1])[0]
    worst = worst_codes(record.held_out, MAX_CODES_TABLED)
    assert busiest in tabled and set(worst) <= set(tabled)
    assert f"Of {len(data['held_out']['per_product_code']):,} product codes, the " in page
    small, _ = build_report(catalogue_record(500, seed=3))
    assert len(page) < 1.5 * len(small), "the page grows with the figures' detail, not the codes"
    counts = record.points.code_counts()
    drawn = drawn_codes(list(counts), counts, worst)
    assert len(drawn) == MAX_CODES_DRAWN and set(worst[:MAX_WORST_DRAWN]) <= set(drawn)


@pytest.mark.skipif(browser_support.chromium() is None,
                    reason="Chromium is not installed (apt-get install chromium); CI installs it")
def test_the_page_renders_in_a_headless_browser(local_url: str, tmp_path: Path) -> None:
    deliver(local_url, 0)
    assert train_model.main([local_url]) == 0
    deliver(local_url, 1)
    assert train_model.main([local_url, "--champion-tolerance", "100"]) == 0
    store = open_store(local_url)
    newest = sorted(k for k in store.list_keys(REPORTS_PREFIX) if k.endswith(".html"))[-1]
    shot = tmp_path / "report.png"
    dom = browser_support.render(Path(store.location(newest)).as_uri(), screenshot=shot)
    page = Page(dom)
    assert page.outcome == "published"
    assert page.figures == ["curves", "accuracy", "drift"]
    assert "PUBLISHED" in "".join(page.text)
    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    not_white = (pixels[..., :3] < 0.9).any(axis=2).mean()
    assert not_white > 0.03, f"the screenshot is (nearly) blank: {not_white:.3%} non-white pixels"
    colours = len(np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert colours > 50, "figures drawn in colour"


def test_hostile_product_codes_are_shown_as_text(local_url: str) -> None:
    evil = "<script>alert(1)</script>$\\frac{$"  # a '$' pair would be (broken) mathtext
    data = simulate_tranche(400, seed=5).to_csv().replace(b"SKU001", evil.encode())
    open_store(local_url).write_bytes(tranche_key(WEEK.isoformat()), data)
    assert train_model.main([local_url]) == 0
    [(page, twin, raw)] = reports(local_url)
    assert page.find("script") == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;$\\frac{$" in raw
    assert page.figures == ["curves", "accuracy"], "a '$' in a code does not lose a figure"
    assert evil in twin["tranche"]["per_product_code"]
    assert_self_contained(page, raw)


RARE_ROWS = "3.1,40,RARE01\n4.2,90,RARE01\n2.5,20,RARE01\n"


def published_record(url: str) -> RunRecord:
    """The record of a published run that replaced a live model: every figure has data (a rare
    part, pooled, gives the long tail's)."""
    deliver(url, 0)
    assert train_model.main([url, "--no-report"]) == 0
    key = deliver(url, 1)
    store = open_store(url)
    store.write_bytes(key, store.read_bytes(key) + RARE_ROWS.encode())
    record = RunRecord(url)
    assert stage_run.run_and_record(url, stage_run.TrainOptions(
        champion_tolerance=100.0, report=False), record) == 0
    assert record.new_model is not None and record.live_model is not None
    assert record.new_model.bases["RARE01"] == "pooled"
    return record


def texts(figure: Any) -> List[Any]:
    """Every text a drawn figure shows (a tick label only when its tick is within the view)."""
    from matplotlib.text import Text

    def shown(text: Any) -> bool:
        return bool(text.get_visible() and text.get_text().strip())

    ticks, drawn = set(), []
    for ax in figure.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            ticks |= {id(label) for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                      for label in (tick.label1, tick.label2)}
            drawn += [label for tick in axis._update_ticks()
                      for label in (tick.label1, tick.label2) if shown(label)]
    return [t for t in figure.findobj(Text) if shown(t) and id(t) not in ticks] + drawn


def test_curve_panels_draw_the_band_up_to_the_p90_the_service_returns(local_url: str) -> None:
    from matplotlib.collections import PolyCollection

    record = published_record(local_url)
    drawn = curves_figure(record)
    assert drawn is not None and "p90" in drawn.caption
    panels = [ax for ax in drawn.figure.axes if ax.get_visible()]
    assert len(panels) == 6
    for ax in panels:
        code = ax.get_title().split(" ")[0]
        [band] = [c for c in ax.collections if isinstance(c, PolyCollection)]
        edge = band.get_paths()[0].vertices
        orders = np.unique(edge[:, 0])[1:-1]
        estimate, upper, _ = record.new_model.predict_bounded([code] * len(orders), orders)
        assert upper is not None
        top = np.array([edge[edge[:, 0] == x, 1].max() for x in orders])
        bottom = np.array([edge[edge[:, 0] == x, 1].min() for x in orders])
        assert np.allclose(top, upper) and np.allclose(bottom, estimate)
        assert (upper > estimate).any(), "a band, not a line"


def test_figures_fill_the_page_with_readable_text_and_nothing_overlaps(local_url: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    record = published_record(local_url)
    many = catalogue_record(300, seed=4)
    many.new_model = record.new_model
    many.violations = [{"rule": "hours_to_dispatch_negative", "rows": 3},
                       {"rule": "orders_placed_not_a_whole_number", "rows": 1}]
    drawn = [(name, draw(r)) for r in (record, many) for name, _, draw in FIGURES]
    assert {name for name, d in drawn if d is not None} == {name for name, _, _ in FIGURES}
    for name, (figure, _) in [(name, d) for name, d in drawn if d is not None]:
        assert figure.get_suptitle() == "", f"{name}: captions go under the heading, in the page"
        width = figure.get_figwidth() * figure.dpi
        assert width == FIGURE_PIXELS, f"{name}: {width} px, shown at 1:1 in the page's column"
        FigureCanvasAgg(figure).draw()
        renderer = figure.canvas.get_renderer()
        shown = texts(figure)
        small = [(t.get_text(), t.get_fontsize()) for t in shown
                 if t.get_fontsize() < MIN_FONT_POINTS]
        assert not small, f"{name}: text below {MIN_FONT_POINTS} pt: {small[:5]}"
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in shown]
        page = figure.bbox
        outside = [text for text, box in boxes if box.x0 < page.x0 or box.x1 > page.x1
                   or box.y0 < page.y0 or box.y1 > page.y1]
        assert not outside, f"{name}: text cut off at the figure's edge: {outside[:5]}"
        overlapping = [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
                       if box_a.overlaps(box_b)]
        assert not overlapping, f"{name}: overlapping text: {overlapping[:5]}"


def test_the_not_all_codes_caption_sits_in_the_page_under_the_heading() -> None:
    page, data = build_report(catalogue_record(300, seed=4))
    parsed = Page(page)
    captions = [a for a in parsed.find("p") if a.get("class") == "caption"]
    assert captions, "each figure has its caption in the page"
    assert f"{MAX_CODES_DRAWN} of " in page and "the JSON twin has every code" in page


def test_tables_say_yes_and_no(local_url: str) -> None:
    record = published_record(local_url)
    page, data = build_report(record)
    cells = [t.strip() for t in Page(page).text]
    assert data["history"] and data["drift"]
    assert "True" not in cells and "False" not in cells
    assert "yes" in cells and "no" in cells


def test_an_unchanged_run_writes_no_new_report(
    local_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    deliver(local_url, 0)
    assert train_model.main([local_url]) == 0
    assert len(reports(local_url)) == 1
    caplog.set_level(logging.INFO)
    for _ in range(2):
        caplog.clear()
        assert train_model.main([local_url]) == 0
        said = [r.getMessage() for r in caplog.records]
        assert any("very tranche" in m for m in said)
        assert not any(m.startswith("run report") for m in said)
    assert len(reports(local_url)) == 1
