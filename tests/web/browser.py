"""Finding and launching a headless Chromium for the dashboard tests.

Playwright cannot download its own browser here (no web at run time), so the tests drive the
distribution's Chromium: $CRMA_CHROMIUM if set, else Debian's binaries, else a Chromium that
`playwright install` left in its cache. `make test CI=1` installs Debian's package when it
is missing (Makefile, target `browser`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# The real binary first: /usr/bin/chromium is Debian's wrapper script around it.
DEBIAN_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
# Headless, no sandbox (containers run as root), and none of the browser's own traffic
# (updates, sync, component downloads): the tests count every request the page makes.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def find_chromium() -> tuple[str | None, str]:
    """(executable or None, how it was found or why none was)."""
    override = os.environ.get("CRMA_CHROMIUM")
    if override:
        if Path(override).is_file() and os.access(override, os.X_OK):
            return override, "$CRMA_CHROMIUM"
        return None, f"$CRMA_CHROMIUM={override} is not an executable file"
    for path in DEBIAN_PATHS:
        if Path(path).is_file() and os.access(path, os.X_OK):
            return path, path
    on_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if on_path:
        return on_path, on_path
    bundled = _playwright_bundled()
    if bundled:
        return bundled, "Playwright's own Chromium"
    return None, ("no Chromium found: install the distribution's package (`apt-get install "
                  "chromium`; `make test CI=1` does it) or set CRMA_CHROMIUM")


def _playwright_bundled() -> str | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        path = p.chromium.executable_path
    return path if path and Path(path).is_file() else None
