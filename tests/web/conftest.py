"""Fixtures for the dashboard tests: a real `crma dev` (API, worker, relay, reaper on a fresh
data directory, SmolLM2 from the shared model store under .cache/), a headless Chromium, and
a page that fails the test on any dialog, script error, Content-Security-Policy violation
or request to another host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import free_port, stop_process
from tests.web.browser import CHROMIUM_ARGS, find_chromium

ROOT = Path(__file__).resolve().parents[2]
# Shared with tests/crma_core/test_crma_smollm2.py: converted once, reused by later runs.
MODEL_STORE = ROOT / ".cache" / "crma-models"
# Seconds the worker sleeps after each optimizer step (a tests-only setting): a 9-step job on
# SmolLM2 then lasts long enough for the page to be seen drawing its loss curve.
STEP_DELAY_S = "1.5"
# Where the browser tests save their screenshots: a temporary folder, so that a test run
# leaves the checkout as it was; `make screenshots` points it at docs/images to refresh the
# README's pictures.
SCREENSHOTS = Path(os.environ.get("CRMA_SCREENSHOT_DIR")
                   or Path(tempfile.gettempdir()) / "crma-dashboard-screenshots")


@dataclass
class DevServer:
    base: str
    key: str
    account_id: str
    data_dir: Path
    log: Path

    @property
    def dashboard(self) -> str:
        return f"{self.base}/dashboard/"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"},
                            timeout=30)

    def create_account(self) -> dict:
        """Another account on this installation (`crma admin create-account`)."""
        env = {k: v for k, v in os.environ.items() if k != "CRMA_DATABASE_URL"}
        made = subprocess.run(
            [sys.executable, "-m", "crma_cli.main", "admin", "create-account", "--data-dir",
             str(self.data_dir), "--name", "other", "--plan", "pro", "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
        return json.loads(made.stdout)

    def upload(self, path: Path, name: str | None = None) -> dict:
        with self.api() as client:
            response = client.post("/v1/files", data={"purpose": "fine-tune"},
                                   files={"file": (name or path.name, path.read_bytes())})
        assert response.status_code == 201, response.text
        return response.json()


def _wait_ready(base: str, data_dir: Path, server: subprocess.Popen, log: Path,
                timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    account = None
    while time.monotonic() < deadline:
        assert server.poll() is None, "crma dev exited early:\n" + log.read_text()[-4000:]
        path = data_dir / "dev-account.json"
        if account is None and path.is_file():
            account = json.loads(path.read_text())
        if account:
            try:
                model = httpx.get(f"{base}/v1/models/smollm2-135m-instruct", timeout=5,
                                  headers={"Authorization": f"Bearer {account['api_key']}"})
                if model.status_code == 200 and model.json()["available"]:
                    return account
            except httpx.HTTPError:
                pass
        time.sleep(1)
    raise AssertionError("crma dev did not become ready with SmolLM2 installed:\n"
                         + log.read_text()[-4000:])


@contextmanager
def running_dev(tmp: Path, extra_env: dict[str, str] | None = None) -> Iterator[DevServer]:
    """`crma dev` on a fresh data directory under `tmp`, SmolLM2 from the shared model store,
    `extra_env` on top of this process's environment; stopped on exit."""
    data_dir, log_path = tmp / "data", tmp / "dev.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CRMA_DATA_DIR": str(data_dir), "CRMA_MODEL_STORE_DIR": str(MODEL_STORE)}
    for name in ("CRMA_DATABASE_URL", "CRMA_BROKER_URL", "CRMA_STORAGE_URL", "CRMA_API_KEY",
                 "CRMA_WEBHOOK_ALLOW_PRIVATE_URLS"):
        env.pop(name, None)
    env.update(extra_env or {})
    log = open(log_path, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "crma_cli.main", "dev", "--data-dir", str(data_dir),
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        account = _wait_ready(base, data_dir, server, log_path, timeout=600)
        yield DevServer(base=base, key=account["api_key"], account_id=account["account_id"],
                        data_dir=data_dir, log=log_path)
    finally:
        stop_process(server, 60)
        log.close()


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with running_dev(tmp_path_factory.mktemp("dashboard"),
                     {"CRMA_WORKER_STEP_DELAY_S": STEP_DELAY_S}) as server:
        yield server


@pytest.fixture(scope="session")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api",
                        reason="the Python package playwright is not installed (dev extra)")
    path, how = find_chromium()
    if path is None:
        pytest.skip(how)
    return path


@pytest.fixture(scope="module")
def browser(chromium: str):  # noqa: ANN201 - a Playwright Browser
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


# Chromium logs every 4xx/5xx answer to fetch() as a console error; the pages show those
# errors themselves (a rejected upload is a 400), so only other console errors count.
_EXPECTED_CONSOLE = ("Failed to load resource: the server responded with a status of",)


@dataclass
class Watched:
    """What a page did that a test must not see: dialogs, script errors, CSP violations
    (console errors), requests to any other origin."""

    origin: str
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    requests: list[tuple[str, dict]] = field(default_factory=list)

    def on_request(self, request) -> None:  # noqa: ANN001 - a Playwright Request
        url = request.url
        self.requests.append((url, request.headers))
        if url.startswith(("data:", "blob:")):
            return
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            self.foreign.append(url)

    def on_console(self, message) -> None:  # noqa: ANN001
        if message.type == "error" and not message.text.startswith(_EXPECTED_CONSOLE):
            self.errors.append(message.text)

    def check(self) -> None:
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"
        assert self.errors == [], f"script errors or CSP violations: {self.errors}"
        assert self.foreign == [], f"requests to other hosts: {self.foreign}"


def open_page(browser, server: DevServer, **context_options):  # noqa: ANN001, ANN201
    """A new tab (own sessionStorage) and what it is watched for."""
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 900},
                                     "accept_downloads": True, **context_options})
    page = context.new_page()
    page.set_default_timeout(30_000)
    watched = Watched(origin=server.base)
    page.on("request", watched.on_request)
    page.on("console", watched.on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))

    def on_dialog(dialog) -> None:  # noqa: ANN001
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return context, page, watched


@pytest.fixture
def page(browser, dev_server: DevServer):  # noqa: ANN001, ANN201
    context, tab, watched = open_page(browser, dev_server)
    tab.watched = watched
    yield tab
    context.close()
    watched.check()


def sign_in(page, server: DevServer, key: str | None = None) -> None:  # noqa: ANN001
    page.goto(server.dashboard)
    page.fill("#api-key", key or server.key)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#nav:not([hidden])")


def go(page, server: DevServer, route: str) -> None:  # noqa: ANN001
    """Open a dashboard route (`/jobs/new`) and wait until its page has drawn itself (the
    router marks <main>; the previous page's content would otherwise still match)."""
    page.goto(f"{server.dashboard}#{route}")
    page.wait_for_selector(f"main[data-rendered='{route}']")


def save_screenshot(page, name: str, *, height: int | None = None) -> Path:  # noqa: ANN001
    """A full-page PNG into docs/images (or $CRMA_SCREENSHOT_DIR), cut at `height` px."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    # From the top, pointer away: the sticky bar where it belongs, no hover state.
    page.evaluate("window.scrollTo(0, 0)")
    page.mouse.move(0, 0)
    page.wait_for_timeout(200)
    full = page.evaluate("document.documentElement.scrollHeight")
    width = page.viewport_size["width"]
    clip = {"x": 0, "y": 0, "width": width, "height": min(full, height or full)}
    page.screenshot(path=str(path), full_page=True, clip=clip, animations="disabled")
    return path
