"""Headless Chromium for checks that need a real browser: render a page, dump its DOM."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--mute-audio",
)


def chromium() -> Optional[str]:
    """The path of a Chromium (or Chrome) executable, or None when none is installed."""
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def render(url: str, screenshot: Optional[Path] = None, budget_ms: int = 5000) -> str:
    """The DOM of a page after its scripts ran (``--dump-dom``); optionally a PNG screenshot.

    Runs Chromium headless with a fresh profile; ``budget_ms`` is the virtual time the page
    gets to run scripts before the DOM is taken.
    """
    browser = chromium()
    if browser is None:
        raise RuntimeError("no chromium executable found (apt-get install chromium)")
    timeout = max(30.0, budget_ms / 1000 * 6)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        base: List[str] = [browser, *_FLAGS, f"--user-data-dir={profile}",
                           f"--virtual-time-budget={budget_ms}"]
        done = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True,
                              timeout=timeout, check=True)
        if screenshot is not None:
            subprocess.run(base + [f"--screenshot={screenshot}", "--window-size=1200,1600",
                                   "--run-all-compositor-stages-before-draw", url],
                           capture_output=True, timeout=timeout, check=True)
    return done.stdout
