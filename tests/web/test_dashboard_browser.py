"""The dashboard in headless Chromium against a real `crma dev` (API + worker + SmolLM2 on
CPU): sign in, a rejected upload shows its lines, a file named like markup stays text, a job
created from the form draws its loss curve while it trains and its adapter downloads with a
matching sha256, a continual run shows its heatmap, and the pages work on a phone, with the
keyboard and in dark mode. Every page is watched for dialogs, script errors, CSP violations
and requests to other hosts (conftest.Watched).

Real training is kept to one job and one two-domain run for the whole module (2 cores)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from tests.web.conftest import DevServer, go, open_page, save_screenshot, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MARKUP_NAME = "<img src=x onerror=alert(1)>"
TERMINAL = ("succeeded", "failed", "cancelled")


def _status(page) -> str | None:  # noqa: ANN001
    return page.get_attribute(".page-header .badge", "data-status")


def _wait_status(page, statuses: tuple[str, ...], timeout_s: float) -> str:  # noqa: ANN001
    page.wait_for_function(
        "statuses => statuses.includes(document.querySelector('.page-header .badge')?.dataset.status)",
        arg=list(statuses), timeout=timeout_s * 1000)
    return _status(page)


def _option_for(page, select: str, filename: str) -> str:  # noqa: ANN001
    """The value of the option of `select` whose label starts with `filename`."""
    options = page.eval_on_selector_all(f"{select} option",
                                        "els => els.map(e => [e.value, e.textContent])")
    matches = [value for value, label in options if label.startswith(filename + " ·")]
    assert matches, (filename, options)
    return matches[0]


def test_sign_in_keeps_the_key_in_the_tab_and_sends_it_only_as_a_bearer_header(
        page, dev_server: DevServer) -> None:  # noqa: ANN001
    page.goto(dev_server.dashboard)
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.fill("#api-key", "sk-crma-" + "x" * 40)
    page.press("#api-key", "Enter")
    alert = page.wait_for_selector(".signin .alert")
    assert "Sign-in failed" in alert.inner_text()
    assert page.evaluate("sessionStorage.length") == 0

    page.watched.requests.clear()
    page.fill("#api-key", dev_server.key)
    page.click("button[type=submit]")
    page.wait_for_selector("#account:not([hidden])")
    assert page.inner_text("#account-id") == dev_server.account_id
    assert page.evaluate("Object.values(sessionStorage)") == [dev_server.key]
    assert page.evaluate("document.cookie") == ""
    assert page.context.cookies() == []
    api_calls = [(url, headers) for url, headers in page.watched.requests if "/v1/" in url]
    assert api_calls
    for url, headers in api_calls:
        assert dev_server.key not in url
        assert headers.get("authorization") == f"Bearer {dev_server.key}", url

    page.click("#sign-out")
    page.wait_for_selector("#api-key")
    assert page.evaluate("sessionStorage.length") == 0


def test_a_rejected_upload_shows_each_problem_with_its_line(page, dev_server: DevServer) -> None:  # noqa: ANN001
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": "Hello!"}]})
    bad = "\n".join([good, good, json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
                     "{not json"]) + "\n"
    sign_in(page, dev_server)
    go(page, dev_server, "/files")
    page.set_input_files("#upload-file", files=[{"name": "broken.jsonl", "mimeType": "application/jsonl",
                                                 "buffer": bad.encode()}])
    alert = page.wait_for_selector(".upload-result .alert.tone-danger")
    text = alert.inner_text()
    assert "broken.jsonl was not accepted" in text
    rows = alert.query_selector_all(".line-errors tbody tr")
    lines = [row.query_selector("td").inner_text() for row in rows]
    assert "Line 3" in lines and "Line 4" in lines
    assert "role must be one of" in text and "malformed JSON" in text
    # Not stored: the list does not show it.
    assert "broken.jsonl" not in page.inner_text("section[aria-label='Your files']")


def test_a_file_named_like_markup_is_shown_as_text_and_can_be_deleted(
        page, dev_server: DevServer) -> None:  # noqa: ANN001
    sign_in(page, dev_server)
    go(page, dev_server, "/files")
    content = (EXAMPLES / "capitals_valid.jsonl").read_bytes()
    page.set_input_files("#upload-file", files=[{"name": MARKUP_NAME, "mimeType": "application/jsonl",
                                                 "buffer": content}])
    page.wait_for_selector(".upload-result .alert.tone-success")
    names = page.eval_on_selector_all(".filename", "els => els.map(e => e.textContent)")
    assert MARKUP_NAME in names
    assert page.query_selector("main img") is None
    assert page.evaluate("document.querySelectorAll('img[src=x], img[onerror]').length") == 0
    row = page.locator("tr", has=page.locator(".filename", has_text=MARKUP_NAME))
    file_id = row.locator("code.mono").inner_text()

    row.get_by_role("button", name=f"Delete {MARKUP_NAME}").click()
    dialog = page.locator("dialog[open]")
    assert MARKUP_NAME in dialog.inner_text()  # the confirmation shows it as text too
    dialog.get_by_role("button", name="Delete").click()
    page.wait_for_selector(f"tr[data-key='{file_id}']", state="detached")
    with dev_server.api() as api:
        assert api.get(f"/v1/files/{file_id}").status_code == 404
    # page fixture: no dialog (alert) fired, no script error


def test_a_job_from_the_form_charts_its_loss_while_it_trains_and_its_adapter_downloads(
        browser, page, dev_server: DevServer) -> None:  # noqa: ANN001
    train = dev_server.upload(EXAMPLES / "capitals_train.jsonl")
    valid = dev_server.upload(EXAMPLES / "capitals_valid.jsonl")
    sign_in(page, dev_server)
    go(page, dev_server, "/jobs/new")
    page.wait_for_selector("form.create-form")
    page.select_option("[name='training_file']", _option_for(page, "[name='training_file']", train["filename"]))
    page.select_option("[name='validation_file']", _option_for(page, "[name='validation_file']", valid["filename"]))
    page.fill("[name='hyperparameters.n_epochs']", "1")
    page.fill("[name='hyperparameters.batch_size']", "4")
    page.fill("[name='suffix']", "capitals")
    page.click("summary:has-text('Budget and more')")
    page.fill("[name='metadata']", "note=<script>alert(2)</script>")

    # The estimate is on screen, and the button enabled, before anything is submitted.
    page.wait_for_selector(".verdict[data-allowed='true']")
    with dev_server.api() as api:
        estimate = api.post("/v1/fine_tuning/jobs/estimate", json={
            "model": "smollm2-135m-instruct", "training_file": train["id"],
            "validation_file": valid["id"], "suffix": "capitals",
            "hyperparameters": {"n_epochs": 1, "batch_size": 4},
            "metadata": {"note": "<script>alert(2)</script>"}}).json()
        assert api.get("/v1/fine_tuning/jobs").json()["data"] == []
    figures = {key: page.inner_text(f"[data-estimate='{key}'] .figure-value")
               for key in ("price", "tokens", "duration")}
    assert figures["price"] == f"${estimate['price']}"
    assert figures["tokens"].replace(",", "") == str(estimate["trained_tokens"])
    assert figures["duration"].startswith("≈")
    assert page.is_enabled("button:has-text('Start job')")

    page.click("button:has-text('Start job')")
    page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    with dev_server.api() as api:
        # A second job waits behind the first (one worker): cancelled from its own page
        # before it starts, in a second tab, while the first tab keeps watching.
        queued = api.post("/v1/fine_tuning/jobs", json={
            "model": "smollm2-135m-instruct", "training_file": train["id"]}).json()
    _cancel_queued_job(browser, dev_server, queued["id"])

    samples: list[tuple[str | None, int]] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = _status(page)
        samples.append((status, int(page.get_attribute("[data-chart='loss'] figure", "data-points"))))
        if status in TERMINAL:
            break
        time.sleep(0.5)
    assert samples[-1][0] == "succeeded", samples[-1]
    running = [points for status, points in samples if status == "running" and points > 0]
    assert len(set(running)) >= 2, f"the loss chart never grew while the job ran: {samples}"
    assert running == sorted(running)

    with dev_server.api() as api:
        events = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        artifacts = {a["name"]: a for a in api.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts").json()["data"]}
    steps = {e["data"]["step"] for e in events if e["type"] == "metrics" and "train_loss" in (e["data"] or {})}
    page.wait_for_function("n => document.querySelector(\"[data-chart='loss'] figure\").dataset.points == n",
                           arg=str(len(steps)))
    assert page.get_attribute("[data-chart='learning-rate'] figure", "data-points") == str(len(steps))
    assert page.get_attribute("[data-chart='grad-norm'] figure", "data-points") == str(len(steps))
    page.wait_for_function("n => document.querySelectorAll('.event-log .event').length == n",
                           arg=len(events))
    assert "<script>alert(2)</script>" in page.inner_text(".kv")  # metadata, as text

    _recipe_and_results_are_shown(page, dev_server, job_id, events, artifacts)

    name = "lora/adapter_model.safetensors"
    row = page.locator(f"tr[data-key='{name}']")
    row.wait_for()
    with page.expect_download() as download_info:
        row.get_by_role("button", name=f"Download {name}").click()
    saved = download_info.value.path()
    assert hashlib.sha256(Path(saved).read_bytes()).hexdigest() == artifacts[name]["sha256"]
    assert row.locator(".download-status").get_attribute("data-verified") == "true"
    save_screenshot(page, "dashboard-job.png", height=1500)

    _another_account_finds_no_such_job(browser, dev_server, job_id)

    go(page, dev_server, "/billing")
    page.wait_for_selector("tr[data-key] .kind-capture")
    ledger = page.inner_text("section[aria-label='Ledger']")
    assert job_id in ledger and "Capture" in ledger and "Hold" in ledger
    assert page.locator(".day[data-cost]:not([data-cost='0'])").count() >= 1


def _recipe_and_results_are_shown(page, dev_server: DevServer, job_id: str, events: list,  # noqa: ANN001
                                  artifacts: dict) -> None:
    """Issue 18 through the stack: OpenAI's metric names in the events, the checkpoint list
    and the finished job (full_valid_loss, the best checkpoint marked), the model card and
    metrics.jsonl in the bundle; and the job page shows the resolved hyperparameters (packing
    and the micro-batch plan included), the best checkpoint and full_valid_loss."""
    with dev_server.api() as api:
        job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        checkpoints = api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
        card = api.get(artifacts["README.md"]["url"]).text
    data = [e["data"] or {} for e in events]
    step = next(d for d in data if "train_loss" in d and "total_steps" in d)
    assert "train_mean_token_accuracy" in step and step["accumulation_steps"] >= 1
    assert any("valid_loss" in d and "valid_mean_token_accuracy" in d for d in data)
    plan = next(d for e, d in zip(events, data) if e["type"] == "message" and "accumulation_steps" in d)
    assert plan["batch_size"] == 4
    metrics = job["metrics"]
    assert metrics["full_valid_loss"] is not None and metrics["train_loss"] is not None
    best = [c for c in checkpoints if c["best"]]
    assert len(best) == 1, checkpoints
    assert best[0]["metrics"]["valid_loss"] == min(c["metrics"]["valid_loss"] for c in checkpoints
                                                   if c["metrics"]["valid_loss"] is not None)
    last = max(checkpoints, key=lambda c: c["step_number"])
    assert last["metrics"]["full_valid_loss"] == metrics["full_valid_loss"]
    assert {"README.md", "metrics.jsonl", "manifest.json"} <= set(artifacts)
    assert "CRMA" in card and "metrics.jsonl" in card  # the model card says what each part is
    hp = job["hyperparameters"]
    assert (hp["packing"], hp["batch_size"]) == (False, 4)

    page.wait_for_selector("[data-field='full_valid_loss']")
    assert float(page.inner_text("[data-field='full_valid_loss']")) == pytest.approx(metrics["full_valid_loss"], abs=1e-4)
    assert f"step {metrics['best_step']}" in page.inner_text("[data-field='best']")
    assert page.inner_text("[data-field='packing']") == "off"
    assert page.inner_text("[data-field='n_evals']") == str(hp["n_evals"])
    assert page.inner_text("[data-field='max_seq_len']").startswith(f"{hp['max_seq_len']:,}")
    passes = "one pass" if plan["accumulation_steps"] == 1 else f"{plan['accumulation_steps']} passes"
    page.wait_for_function("text => document.querySelector(\"[data-field='batch_plan']\").textContent.includes(text)",
                           arg=passes)
    assert page.inner_text("[data-field='batch_plan']").startswith("4 rows per step")
    page.locator(f"tr[data-key='{best[0]['step_number']}'] [data-best='true']").wait_for()
    assert page.locator("[data-best='true']").count() == 1


def _another_account_finds_no_such_job(browser, dev_server: DevServer, job_id: str) -> None:  # noqa: ANN001
    """The page of another account's job says what a missing job says (same API 404)."""
    other = dev_server.create_account()
    context, tab, watched = open_page(browser, dev_server)
    try:
        sign_in(tab, dev_server, other["api_key"])
        messages = []
        for target in (job_id, "ftjob-" + "x" * 24):
            go(tab, dev_server, f"/jobs/{target}")
            alert = tab.wait_for_selector("main .alert.tone-danger")
            messages.append(alert.inner_text().replace(target, "<id>"))
            assert tab.query_selector("[data-chart='loss']") is None
        assert messages[0] == messages[1]
        assert "could not be loaded" in messages[0]
    finally:
        context.close()
    watched.check()


def _cancel_queued_job(browser, dev_server: DevServer, job_id: str) -> None:  # noqa: ANN001
    context, tab, watched = open_page(browser, dev_server)
    try:
        sign_in(tab, dev_server)
        go(tab, dev_server, f"/jobs/{job_id}")
        assert _status(tab) == "queued"
        tab.get_by_role("button", name="Cancel job").click()
        tab.locator("dialog[open]").get_by_role("button", name="Cancel job").click()
        assert _wait_status(tab, ("cancelled",), 30) == "cancelled"
        assert tab.locator(".page-header button:has-text('Cancel job')").count() == 0
    finally:
        context.close()
    watched.check()


def test_a_continual_run_shows_its_stages_heatmap_and_comparison(page, dev_server: DevServer) -> None:  # noqa: ANN001
    for domain in ("cooking", "astronomy"):
        for part in ("train", "valid"):
            dev_server.upload(EXAMPLES / "continual" / f"{domain}_{part}.jsonl")
    sign_in(page, dev_server)
    go(page, dev_server, "/runs/new")
    page.wait_for_selector("form.create-form")
    for i, domain in enumerate(("cooking", "astronomy")):
        page.fill(f"[name='domains[{i}].name']", domain)
        for field, part in (("training_file", "train"), ("validation_file", "valid")):
            select = f"[name='domains[{i}].{field}']"
            page.select_option(select, _option_for(page, select, f"{domain}_{part}.jsonl"))
    page.fill("[name='hyperparameters.n_epochs']", "1")
    page.fill("[name='hyperparameters.batch_size']", "4")
    page.check("[name='baseline']")  # the report then compares with one LoRA per domain
    page.wait_for_selector(".verdict[data-allowed='true']")
    assert page.locator(".estimate tbody tr").count() == 2  # per stage
    page.click("button:has-text('Start run')")
    page.wait_for_url("**/#/runs/clrun-*")
    run_id = page.url.rsplit("/", 1)[1]
    assert _wait_status(page, TERMINAL, 900) == "succeeded"

    with dev_server.api() as api:
        run = api.get(f"/v1/continual/runs/{run_id}").json()
    page.wait_for_selector(".heatmap[data-rows='2']")
    cells = page.eval_on_selector_all(".heat-cell", "els => els.map(e => Number(e.dataset.value))")
    assert cells == [value for row in run["report"]["matrix"] for value in row]
    assert page.locator(".heat-empty").count() == 1  # above the diagonal
    headers = page.eval_on_selector_all(".heat-table thead th", "els => els.map(e => e.textContent)")
    assert headers[1:] == ["cooking", "astronomy"]
    assert page.locator(".comparison .bar-group").count() == 2
    assert page.locator(".drift-list li[data-domain='cooking']").count() == 1
    assert [page.get_attribute(f"tr[data-key='{i}'] .badge", "data-status") for i in (0, 1)] == ["succeeded"] * 2
    # What CRMA adds over the baseline, which state serves each domain, general retention:
    # drawn from the report's own numbers.
    report = run["report"]
    versus = report["versus_baseline"]
    drawn = page.eval_on_selector_all(
        ".versus-baseline .diverge-row",
        "els => els.map(e => [e.closest('.bar-group').dataset.domain, Number(e.dataset.value)])")
    expected = [("cooking", versus["forward_pct"]["cooking"]),
                ("cooking", versus["backward_pct"]["cooking"]),
                ("astronomy", versus["forward_pct"]["astronomy"])]
    assert [(d, pytest.approx(v)) for d, v in drawn] == [(d, pytest.approx(v)) for d, v in expected]
    states = page.eval_on_selector_all(".serving-table tbody tr",
                                       "els => els.map(e => [e.dataset.domain, e.dataset.state])")
    assert states == [[s["domain"], s["crma_state"]] for s in report["serving"]]
    general = page.eval_on_selector_all(".general-table tbody td[data-value]",
                                        "els => els.map(e => Number(e.dataset.value))")
    retention = report["general_retention"]
    assert general == pytest.approx([retention[kind][d]["change_pct"] for d in ("cooking", "astronomy")
                                     for kind in ("served", "baseline")])
    routing = report["routing"]  # the router's accuracy on the holdouts, as the table shows it
    routed = page.eval_on_selector_all(".routing-table tbody tr",
                                       "els => els.map(e => e.dataset.domain)")
    assert routed == list(routing["per_domain"])
    assert f"of {routing['examples']} holdout prompts" in page.inner_text(".routing-table caption")
    assert run["fine_tuned_model"] in page.inner_text("main")  # the name to call it by
    save_screenshot(page, "dashboard-run.png", height=1900)

    # Adding a domain: the API's error is shown on the field it names; nothing is queued.
    form = page.locator("form.add-domain")
    form.locator("[name='name']").fill("-not a name")
    form.locator("[name='training_file']").select_option(
        _option_for(page, "form.add-domain [name='training_file']", "cooking_train.jsonl"))
    form.locator("[name='validation_file']").select_option(
        _option_for(page, "form.add-domain [name='validation_file']", "cooking_valid.jsonl"))
    form.get_by_role("button", name="Add domain").click()
    form.locator(".alert.tone-danger").wait_for()
    assert "name" in form.locator(".field.has-error").get_attribute("data-field")
    with dev_server.api() as api:
        assert len(api.get(f"/v1/continual/runs/{run_id}").json()["stages"]) == 2


def test_pages_fit_a_phone_and_read_in_dark_mode(browser, dev_server: DevServer) -> None:  # noqa: ANN001
    context, page, watched = open_page(browser, dev_server, viewport={"width": 390, "height": 844},
                                       color_scheme="dark", is_mobile=True, has_touch=True)
    try:
        sign_in(page, dev_server)
        with dev_server.api() as api:
            job = api.get("/v1/fine_tuning/jobs").json()["data"]
            run = api.get("/v1/continual/runs").json()["data"]
        routes = ["/jobs", "/jobs/new", "/runs", "/runs/new", "/files", "/billing"]
        routes += [f"/jobs/{job[0]['id']}"] if job else []
        routes += [f"/runs/{run[0]['id']}"] if run else []
        for route in routes:
            go(page, dev_server, route)
            page.wait_for_timeout(300)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{route} is {width}px wide on a 390px screen"
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        red, green, blue = (int(v) for v in background[background.index("(") + 1:-1].split(",")[:3])
        assert max(red, green, blue) < 60, background  # dark
    finally:
        context.close()
    watched.check()


def test_keyboard_reaches_everything_with_a_visible_focus(page, dev_server: DevServer) -> None:  # noqa: ANN001
    page.goto(dev_server.dashboard)
    page.keyboard.type(dev_server.key)  # the key field has focus on arrival
    page.keyboard.press("Enter")
    page.wait_for_selector("#nav:not([hidden])")
    page.goto(dev_server.dashboard + "#/files")
    page.reload()  # a fresh load: sequential focus starts at the top of the document
    page.wait_for_selector("main h1")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("Shift+Tab")  # back up into the navigation
    visited = []
    for _ in range(12):
        page.keyboard.press("Tab")
        element = page.evaluate("""() => { const e = document.activeElement;
            return [e.tagName, e.textContent.trim().slice(0, 40), getComputedStyle(e).outlineStyle]; }""")
        visited.append(element)
    assert any(tag == "INPUT" for tag, _, _ in visited), visited  # the upload field
    # (BODY: focus has left the page, to the browser's own UI, after the last control.)
    focused = [(tag, text) for tag, text, outline in visited
               if outline == "none" and tag not in ("INPUT", "BODY")]
    assert focused == [], f"focused without a visible outline: {focused}"
    # Every form control of the create form has a label.
    go(page, dev_server, "/jobs/new")
    page.wait_for_selector("form.create-form")
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('form input, form select, form textarea')]
        .filter(e => !e.labels || !e.labels.length).map(e => e.name)""")
    assert unlabelled == []


def test_the_sse_reader_splits_events_on_any_line_break(page, dev_server: DevServer) -> None:  # noqa: ANN001
    """sse-starlette ends lines with \\r\\n, and a chunk may end between \\r and \\n."""
    page.goto(dev_server.dashboard)
    events = page.evaluate("""async () => {
        const { readServerSentEvents } = await import('./js/sse.js');
        const chunks = ['id: 1\\r', '\\nevent: fine_tuning.job.event\\r\\ndata: {"a":', '1}\\r\\n\\r',
                        '\\n: ping\\r\\n\\r\\ndata: line one\\ndata: line two\\n\\nevent: done\\rdata: succeeded\\r\\r'];
        const body = new ReadableStream({ start(c) { for (const s of chunks) c.enqueue(new TextEncoder().encode(s)); c.close(); } });
        const out = [];
        for await (const e of readServerSentEvents(body)) out.push(e);
        return out;
    }""")
    assert events == [
        {"event": "fine_tuning.job.event", "data": '{"a":1}', "id": "1"},
        {"event": "message", "data": "line one\nline two", "id": "1"},
        {"event": "done", "data": "succeeded", "id": "1"},
    ]


def test_a_diverged_stage_is_shown_above_the_report(page, dev_server: DevServer) -> None:  # noqa: ANN001
    """The report's warnings (crma_core.drift.stage_warnings) as the run page draws them."""
    page.goto(dev_server.dashboard)
    shown = page.evaluate("""async () => {
        const { stageWarnings } = await import('./js/drift.js');
        const none = stageWarnings({ warnings: [] });
        const node = stageWarnings({ warnings: [
            { domain: "finance", code: "stage_worse_than_base_model", own_improvement_pct: -1.9,
              message: "training on finance left its holdout loss 1.90% above the untrained base model's" }] });
        return { none, title: node.querySelector('.alert-title').textContent,
                 items: [...node.querySelectorAll('li')].map((li) => [li.dataset.domain, li.textContent]),
                 classes: node.className };
    }""")
    assert shown["none"] is None and "tone-warning" in shown["classes"]
    assert shown["title"] == "A stage diverged"
    assert shown["items"] == [["finance", "training on finance left its holdout loss 1.90% above "
                                          "the untrained base model's"]]
