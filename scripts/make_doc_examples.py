"""The docs' example outputs, regenerated from a real run: ``python scripts/make_doc_examples.py``.

Run it with the test environment (``.tox/unit_and_functional_tests/bin/python``, for the
in-process client and Chromium's screenshot) after any change that moves the model, the
service's answers, the ``models`` command or the run report, and commit what it changed. In a
temporary directory it builds the store ``run_local.sh`` builds (its ``ROWS``, ``WEEKS`` and
``SEED``, up to a fixed Friday, so the model is the one a fresh clone serves), then:

1. trains as ``run_local.sh`` does and asks the service, in-process, the README's curl, a batch
   and a refused request (README.md, docs/api.md);
2. lets a new week arrive (``simulate --next``), trains, and prints ``models list`` and
   ``models show`` of the model the new one replaced (docs/operations.md);
3. rolls back to that model and trains again: the line saying the rollback holds;
4. screenshots the second run's report in headless Chromium as docs/run_report.png, with the
   page's structure (headings, table columns, figures and their sizes) recorded in the PNG.

Each example replaces what stands between ``<!-- generated: NAME -->`` and
``<!-- /generated: NAME -->`` in its page. tests/test_doc_examples.py runs steps 1-3 again
(without the browser) and checks that the docs hold what they print, and that the screenshot's
recorded structure is the report's today.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline import models, simulate, train_model  # noqa: E402
from pipeline.api.routes import BATCH_PATH, SINGLE_PATH  # noqa: E402
from pipeline.store import open_store  # noqa: E402
from pipeline.training.report import REPORTS_PREFIX  # noqa: E402

UNTIL = "2026-11-27T23:00:00Z"
SHOWN_STORE = "./local-store"
SHOWN_URL = "http://127.0.0.1:8000"
REPORT_PNG = REPO_ROOT / "docs" / "run_report.png"
STRUCTURE_KEY = "report-structure"
SCREEN = (1280, 2250)
WRAP = 96
SINGLE = {"product_code": "SKU001", "orders_placed": 112}
BATCH = [{"product_code": "SKU001", "orders_placed": 40},
         {"product_code": "NEW-9", "orders_placed": 40}]
REFUSED = {"product_code": "SKU999", "orders_placed": -1}
ROLLBACK = ("--reason", "odd curves", "--by", "alice")
# Where each example lives.
PAGES = {
    "curl": "README.md",
    "answer": "docs/api.md",
    "batch": "docs/api.md",
    "refused": "docs/api.md",
    "models-list": "docs/operations.md",
    "models-show": "docs/operations.md",
    "rollback-holds": "docs/operations.md",
}
MARKED = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- /generated: (?P=name) -->)", re.S)
# What differs from one run to the next, whatever the model: versions, times, run ids, paths.
VOLATILE = (
    (re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{8}-[0-9a-f]{4}\b"), "VERSION"),
    (re.compile(r"\b\d{8}T\d{6}Z-[0-9a-f]{8}\b"), "RUN-ID"),
    (re.compile(r"(?<!time_to_dispatch_)\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?"
                r"(Z|[+-]\d\d:\d\d)?"), "TIME"),
)


def local_defaults() -> Dict[str, int]:
    """ROWS, WEEKS and SEED as scripts/run_local.sh defaults them: the store a fresh clone gets."""
    text = (REPO_ROOT / "scripts" / "run_local.sh").read_text()
    found = dict(re.findall(r'^(ROWS|WEEKS|SEED)="\$\{\1:-(\d+)\}"$', text, re.MULTILINE))
    if set(found) != {"ROWS", "WEEKS", "SEED"}:
        raise RuntimeError(f"scripts/run_local.sh no longer sets ROWS, WEEKS and SEED: {found}")
    return {name: int(value) for name, value in found.items()}


@dataclass
class Examples:
    """What the run printed, by example name, and the key of the second run's report."""

    texts: Dict[str, str]
    report_html: str


def _wrap(text: str, first: str, rest: str, width: int = WRAP) -> List[str]:
    """Text broken after commas into lines of at most ``width`` (where it can), with prefixes."""
    lines, line = [], first
    for piece in re.split(r"(?<=,)", text):
        if len(line) + len(piece) > width and line not in (first, rest):
            lines.append(line.rstrip())
            line = rest + piece.lstrip()
        else:
            line += piece
    return lines + [line.rstrip()]


def _shown(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _curl(path: str, body: Any, url: str = SHOWN_URL) -> List[str]:
    return [f"curl -s -X POST {url}{path} \\",
            f"     -H 'Content-Type: application/json' -d '{_shown(body)}'"]


def ask_the_service(store: Path) -> Dict[str, str]:
    """The service's answers, in-process, to the docs' requests, as the docs show them."""
    from starlette.testclient import TestClient

    from pipeline.api.app import create_app
    from pipeline.api.serving import load_latest_serving
    from pipeline.api.settings import ServeSettings

    settings = ServeSettings(api_key=None, unknown_products="reject", request_log="")
    opened = open_store(str(store))
    loaded = load_latest_serving(opened, settings.unknown_products)
    with TestClient(create_app(settings, opened, loaded)) as client:
        single = client.post(SINGLE_PATH, json=SINGLE)
        batch = client.post(BATCH_PATH, json=BATCH)
        refused = client.post(SINGLE_PATH, json=REFUSED)
    if (single.status_code, batch.status_code, refused.status_code) != (200, 200, 422):
        raise RuntimeError(f"unexpected answers: {single.text} {batch.text} {refused.text}")
    answer = single.json()
    return {
        "curl": "\n".join(["```bash", *_curl(SINGLE_PATH, SINGLE),
                           *_wrap(single.text, "# ", "#  "), "```"]),
        "answer": "\n".join(["```json", *_wrap(_shown(answer), "", " "), "```"]),
        "batch": "\n".join(["```json", f"POST {BATCH_PATH}", _shown(BATCH), "",
                            str(batch.status_code), *_wrap(_shown(batch.json()), "", " "),
                            "```"]),
        "refused": "\n".join(["```bash", *_curl(SINGLE_PATH, REFUSED),
                              *_wrap(f"{refused.status_code} {refused.text}", "# ", "#  "),
                              "```"]),
    }


def _printed(argv: Sequence[str]) -> str:
    """What ``python -m pipeline.models ARGV`` prints on stdout; it must succeed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = models.main(list(argv))
    if status != 0:
        raise RuntimeError(f"models {' '.join(argv)} exited {status}")
    return out.getvalue()


def _succeed(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} exited {status}")


class _Lines(logging.Handler):
    """The stage's log lines, formatted as it writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(train_model.log_formatter())
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def run_examples(workdir: Path) -> Examples:
    """Steps 1 to 3: a real run in ``workdir``; what it printed, by example name."""
    store = workdir / "local-store"
    shown = str(store.resolve())
    settings = local_defaults()
    world = ["--rows", str(settings["ROWS"]), "--seed", str(settings["SEED"])]
    _succeed(simulate.main([str(store), *world, "--weeks", str(settings["WEEKS"]),
                            "--until", UNTIL]), "simulate")
    _succeed(train_model.main([str(store)]), "train_model")
    texts = ask_the_service(store)

    _succeed(simulate.main([str(store), *world, "--next"]), "simulate --next")
    _succeed(train_model.main([str(store)]), "train_model on the new week")
    listed = json.loads(_printed([str(store), "list", "--json"]))
    replaced = listed[1]["model_version"]
    texts["models-list"] = "\n".join([
        "```", f"$ python -m pipeline.models {SHOWN_STORE} list",
        _printed([str(store), "list"]).rstrip(), "```"])
    texts["models-show"] = "\n".join([
        "```", f"$ python -m pipeline.models {SHOWN_STORE} show {replaced}",
        _printed([str(store), "show", replaced]).rstrip().replace(shown, SHOWN_STORE), "```"])

    _succeed(models.main([str(store), "rollback", replaced, *ROLLBACK]), "models rollback")
    lines = _Lines()
    logging.getLogger("train_model").addHandler(lines)
    try:
        _succeed(train_model.main([str(store)]), "train_model after the rollback")
    finally:
        logging.getLogger("train_model").removeHandler(lines)
    holds = [line for line in lines.lines if "rolled back from" in line]
    if len(holds) != 1:
        raise RuntimeError(f"the run after the rollback said {lines.lines}")
    texts["rollback-holds"] = "\n".join(["```", holds[0], "```"])

    newest = max(key for key in open_store(str(store)).list_keys(REPORTS_PREFIX)
                 if key.endswith(".html"))
    return Examples(texts, (store / newest).read_text(encoding="utf-8").replace(shown, SHOWN_STORE))


def normalised(text: str) -> str:
    """Text with what differs from run to run (versions, times, run ids) named, not given."""
    for pattern, name in VOLATILE:
        text = pattern.sub(name, text)
    return text


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
RELATIVE = 1e-9


def _close(shown: str, printed: str) -> bool:
    """Two printed numbers agree: whole numbers exactly, others to the last digit either shows
    (a rounding that fell the other way on another machine is not a stale example)."""
    if "." not in shown + printed and "e" not in (shown + printed).lower():
        return shown == printed
    decimals = min(len(n.split(".")[1]) if "." in n else 0 for n in (shown, printed))
    a, b = float(shown), float(printed)
    return abs(a - b) <= max(10.0 ** -decimals, RELATIVE * max(abs(a), abs(b)))


def agree(shown: str, printed: str) -> bool:
    """Whether an example in the docs says what a run printed, beyond what differs from run to
    run (versions, times, run ids) and the last digit of a number."""
    shown, printed = normalised(shown), normalised(printed)
    if NUMBER.split(shown) != NUMBER.split(printed):
        return False
    numbers = list(zip(NUMBER.findall(shown), NUMBER.findall(printed)))
    return all(a == b or _close(a, b) for a, b in numbers)


def marked(page: str) -> Dict[str, str]:
    """Every generated example in a page's text, by name."""
    return {m.group("name"): m.group("body").rstrip("\n") for m in MARKED.finditer(page)}


def with_examples(page: str, texts: Dict[str, str]) -> str:
    """A page's text with each marked example that no longer agrees replaced by the new one
    (one that agrees is left as it is, so a re-run changes nothing that did not change)."""
    def replace(match: "re.Match[str]") -> str:
        body = old = match.group("body").rstrip("\n")
        new = texts.get(match.group("name"))
        if new is not None and not agree(old, new):
            body = new
        return f"{match.group(1)}{body}\n{match.group(4)}"

    return MARKED.sub(replace, page)


class _Structure(HTMLParser):
    """A report page's headings, table columns and figures (with their pixel sizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Dict[str, List[Any]] = {"headings": [], "columns": [], "figures": []}
        self._in: Optional[str] = None
        self._row: Optional[List[str]] = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        named = dict(attrs)
        if tag in ("h2", "th"):
            self._in, self._text = tag, ""
        if tag == "tr":
            self._row = []
        if tag == "img" and named.get("data-figure"):
            data = base64.b64decode(str(named.get("src", "")).split(",", 1)[1])
            from PIL import Image

            size = Image.open(io.BytesIO(data)).size
            self.found["figures"].append([named["data-figure"], *size])

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in == "h2":
            self.found["headings"].append(self._text.strip())
        elif tag == self._in == "th" and self._row is not None:
            self._row.append(self._text.strip())
        elif tag == "tr" and self._row:
            self.found["columns"].append(self._row)
            self._row = None
        if tag == self._in:
            self._in = None


def report_structure(page: str) -> Dict[str, List[Any]]:
    """What a report page is made of: headings, table columns, figures and their sizes."""
    parser = _Structure()
    parser.feed(page)
    return parser.found


def screenshot(page: str, workdir: Path) -> Path:
    """The report page in headless Chromium at 1280 px wide: the top of it, as a PNG."""
    from tests import browser_support

    binary = browser_support.chromium()
    if binary is None:
        raise RuntimeError("no Chromium found (install Debian's chromium or set CHROMIUM)")
    source, shot = workdir / "report.html", workdir / "report.png"
    source.write_text(page, encoding="utf-8")
    flags = [f for f in browser_support.FLAGS if not f.startswith("--window-size")]
    subprocess.run([binary, *flags, f"--window-size={SCREEN[0]},{SCREEN[1]}",
                    f"--user-data-dir={workdir / 'profile'}", "--virtual-time-budget=5000",
                    "--run-all-compositor-stages-before-draw", f"--screenshot={shot}",
                    source.as_uri()], check=True, capture_output=True, timeout=120)
    return shot


def save_screenshot(shot: Path, page: str) -> None:
    """docs/run_report.png: the screenshot, with the page's structure recorded in it."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(STRUCTURE_KEY, json.dumps(report_structure(page), sort_keys=True))
    # A palette of 256 colours keeps the file a third of the size, and the page looks the same.
    Image.open(shot).convert("RGB").quantize(256).save(REPORT_PNG, pnginfo=info, optimize=True)


def recorded_structure(png: Path = REPORT_PNG) -> Optional[Dict[str, List[Any]]]:
    """The report structure recorded in docs/run_report.png, if any."""
    from PIL import Image

    text = Image.open(png).info.get(STRUCTURE_KEY)
    return None if text is None else json.loads(text)  # type: ignore[no-any-return]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run, rewrite the examples in the docs, and screenshot the report."""
    parser = argparse.ArgumentParser(
        prog="make_doc_examples.py",
        description="Regenerate the docs' example outputs (README.md, docs/api.md, "
                    "docs/operations.md, docs/run_report.png) from a real run of run_local.sh's "
                    "store; tests/test_doc_examples.py checks them.")
    parser.add_argument("--no-screenshot", action="store_true",
                        help="leave docs/run_report.png as it is (no Chromium needed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="doc-examples-") as folder:
        examples = run_examples(Path(folder))
        for name in sorted(set(PAGES.values())):
            path = REPO_ROOT / name
            before = path.read_text(encoding="utf-8")
            missing = {n for n, page in PAGES.items() if page == name} - set(marked(before))
            if missing:
                raise RuntimeError(f"{name} has no marked place for {sorted(missing)}")
            after = with_examples(before, examples.texts)
            path.write_text(after, encoding="utf-8")
            print(f"{name}: {'updated' if after != before else 'unchanged'}")
        if not args.no_screenshot:
            save_screenshot(screenshot(examples.report_html, Path(folder)), examples.report_html)
            print(f"{REPORT_PNG.relative_to(REPO_ROOT)}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
