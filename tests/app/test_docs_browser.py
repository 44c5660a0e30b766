"""/docs in a real headless Chromium with every request to another host refused: the page
renders, Authorize takes the API key, and the README's flow through "Try it out -> Execute"
(upload the example files, create a job from the prefilled example) succeeds. Skipped only
where no Chromium/Playwright is installed (tests/app/test_docs_offline.py checks the same
references without a browser)."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.app.helpers import LiveServer, Tenant

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No background traffic of the browser's own (updates, sync): the test counts requests.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _execute(page, operation_id: str) -> str:  # noqa: ANN001 - a Playwright page
    """Click Execute on an expanded operation; the status code it shows."""
    block = page.locator(f"#{operation_id}")
    block.locator("button.execute").click()
    status = block.locator(".live-responses-table .response .response-col_status")
    status.first.wait_for(timeout=60_000)
    return status.first.inner_text().strip()


def _expand(page, operation_id: str):  # noqa: ANN001, ANN202
    block = page.locator(f"#{operation_id}")
    block.locator(".opblock-summary").first.click()
    block.locator("button.execute").wait_for()
    return block


def test_docs_work_offline_and_the_examples_execute(live_server: LiveServer,
                                                    tenant: Tenant) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine")
    origin = urlsplit(live_server.url).netloc
    elsewhere: list[str] = []

    def only_this_server(route) -> None:  # noqa: ANN001
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_this_server)
            page.goto(live_server.url + "/docs")
            page.locator(".opblock").first.wait_for(timeout=60_000)
            assert page.locator(".opblock").count() >= 20

            page.locator("button.authorize").first.click()
            page.locator(".modal-ux input").first.fill(tenant.key)
            page.locator(".modal-ux button.authorize").click()
            page.locator(".modal-ux button.btn-done").click()

            upload = _expand(page, "operations-files-files-create_file")
            for name in ("capitals_train.jsonl", "capitals_valid.jsonl"):
                upload.locator("input[type=file]").set_input_files(ROOT / "examples" / name)
                assert _execute(page, "operations-files-files-create_file") == "201"

            create = _expand(page, "operations-fine-tuning-fine-tuning-create_job")
            body = create.locator("textarea.body-param__text").input_value()
            assert '"training_file": "capitals_train.jsonl"' in body
            assert _execute(page, "operations-fine-tuning-fine-tuning-create_job") == "201"
            response = create.locator(".live-responses-table .response-col_description pre")
            assert '"status": "queued"' in response.first.inner_text()
        finally:
            browser.close()
    assert elsewhere == []
