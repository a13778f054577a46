"""Headless Chromium for the tests: the DOM a page has after its scripts ran, and screenshots.

Not a test module. Tests that need a browser call :func:`chromium` and skip with a
clear reason when it returns None (CI installs Debian's ``chromium``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,1600",
)
GRACE_SECONDS = 60.0


def chromium() -> Optional[str]:
    """The path of a Chromium executable (``CHROMIUM`` or on PATH), or None."""
    named = os.environ.get("CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(url: str, action: List[str], budget_ms: int) -> str:
    binary = chromium()
    if binary is None:
        raise RuntimeError("no Chromium found (install Debian's chromium or set CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            binary, *FLAGS, f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}", *action, url,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=budget_ms / 1000 + GRACE_SECONDS,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def render(url: str, screenshot: Optional[Path] = None, budget_ms: int = 5000) -> str:
    """The page's DOM after its scripts ran for ``budget_ms`` (virtual time); a PNG if asked."""
    dom = _run(url, ["--dump-dom"], budget_ms)
    if screenshot is not None:
        # Without the compositor flag the bottom of a tall page can come out half-drawn.
        _run(url, [f"--screenshot={screenshot}", "--run-all-compositor-stages-before-draw"],
             budget_ms)
        if not screenshot.exists():
            raise RuntimeError(f"chromium wrote no screenshot to {screenshot}")
    return dom
