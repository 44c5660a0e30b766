"""Against a real `crma dev` (API, worker, relay with its webhook thread, reaper) and the real
SmolLM2-135M-Instruct, one short LoRA-only job for the whole module:

- an endpoint on a local receiver gets `fine_tuning.job.succeeded` once, and again only as a
  retry with the same webhook-id after it answered 500; both verify with `standardwebhooks`;
- an endpoint whose receiver is down shows its attempts in the delivery log and is disabled
  after the retry budget (a schedule of seconds, set for this test);
- 169.254.169.254 is refused even in dev;
- a merged export of the job is built by the worker, listed with sha256 and download URLs,
  loads with transformers alone and generates the same greedy tokens as base + LoRA
  through peft;
- the dashboard registers an endpoint (secret shown once), sends it a test event, shows the
  delivery, and exports the job from its page."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import pytest
import torch
from standardwebhooks import Webhook

from tests.app.webhooks.receiver import Receiver, Reply
from tests.web.conftest import (  # noqa: F401 - browser, chromium: fixtures used here
    MODEL_STORE,
    DevServer,
    browser,
    chromium,
    go,
    open_page,
    running_dev,
    sign_in,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROWS = [{"messages": [{"role": "user", "content": f"What is the code word for {topic}?"},
                      {"role": "assistant", "content": f"The code word for {topic} is KIWI-9."}]}
        for topic in ("rain", "tea", "maps", "ships", "bread", "glass", "sand", "wool")]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    # Two retries a second apart instead of a day's schedule.
    with running_dev(tmp_path_factory.mktemp("dev-webhooks"),
                     {"CRMA_WEBHOOK_RETRY_SCHEDULE_S": "[1.0, 1.0]",
                      "CRMA_WEBHOOK_TIMEOUT_S": "5"}) as server:
        yield server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        r.replies.append(Reply(500, b"not now"))
        yield r


@pytest.fixture(scope="module")
def finished(dev: DevServer, receiver: Receiver, tmp_path_factory) -> dict:
    """Endpoints registered, then one LoRA-only job trained to the end."""
    with Receiver() as gone:
        down_url = gone.url + "/down"  # closed from here on: connection refused
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with dev.api() as api:
        good = api.post("/v1/webhooks", json={"url": receiver.url + "/hook",
                                              "event_types": ["fine_tuning.job.succeeded"]})
        assert good.status_code == 201, good.text
        down = api.post("/v1/webhooks", json={"url": down_url})
        assert down.status_code == 201, down.text
        file_id = dev.upload(path)["id"]
        job = api.post("/v1/fine_tuning/jobs", json={
            "model": "smollm2-135m-instruct", "training_file": file_id,
            "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 5},
            "adapter": {"crma": False}})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + 900
        status = None
        while time.monotonic() < deadline:
            status = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(2)
    assert status == "succeeded", dev.log.read_text()[-4000:]
    return {"good": good.json(), "down": down.json(), "job_id": job_id}


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_succeeded_arrives_once_and_again_only_as_a_retry(dev, receiver, finished):
    requests = receiver.wait_for(2, timeout=60)
    assert len({r.headers["webhook-id"] for r in requests}) == 1  # a retry, same id
    assert requests[0].body == requests[1].body
    for request in requests:
        event = Webhook(finished["good"]["secret"]).verify(request.body, request.headers)
        assert event["type"] == "fine_tuning.job.succeeded"
        assert event["data"] == {"id": finished["job_id"]} and event["object"] == "event"
    time.sleep(3)  # a success is not delivered again
    assert len(receiver.requests) == 2
    with dev.api() as api:
        [delivery] = api.get(f"/v1/webhooks/{finished['good']['id']}/deliveries").json()["data"]
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 2
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 200]
    assert delivery["event_id"] == requests[0].headers["webhook-id"]


def test_a_receiver_that_is_down_is_logged_and_disabled(dev, finished):
    down_id = finished["down"]["id"]
    with dev.api() as api:
        endpoint = wait_until(lambda: (lambda e: e if e["status"] == "disabled" else None)(
            api.get(f"/v1/webhooks/{down_id}").json()), 60, "the endpoint to be disabled")
        [delivery] = api.get(f"/v1/webhooks/{down_id}/deliveries").json()["data"]
    assert delivery["event_type"] == "fine_tuning.job.succeeded"
    assert delivery["status"] == "failed" and delivery["attempts"] == 3
    assert all(a["status_code"] is None for a in delivery["attempt_log"])
    assert "ConnectError" in delivery["last_error"]
    assert "3 attempts" in endpoint["disabled_reason"]


def test_metadata_address_is_refused_even_in_dev(dev):
    with dev.api() as api:
        response = api.post("/v1/webhooks", json={"url": "http://169.254.169.254/latest"})
    assert response.status_code == 400 and "link-local" in response.json()["error"]["message"]


def test_merged_export_loads_without_peft_and_generates_the_same(dev, finished, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job_id = finished["job_id"]
    with dev.api() as api:
        made = api.post(f"/v1/fine_tuning/jobs/{job_id}/exports",
                        json={"format": "merged", "dtype": "float32"})
        assert made.status_code == 201, made.text
        export_id = made.json()["id"]
        done = wait_until(lambda: (lambda e: e if e["status"] in ("succeeded", "failed")
                                   else None)(
            api.get(f"/v1/fine_tuning/jobs/{job_id}/exports/{export_id}").json()), 600,
            "the export")
        assert done["status"] == "succeeded", (done, dev.log.read_text()[-4000:])
        folder, adapter = tmp_path / "merged", tmp_path / "adapter"
        for entry in done["files"]:
            data = api.get(entry["url"]).content
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            (folder / entry["name"]).parent.mkdir(parents=True, exist_ok=True)
            (folder / entry["name"]).write_bytes(data)
        for entry in api.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts").json()["data"]:
            if entry["name"].startswith("lora/"):
                (adapter / entry["name"]).parent.mkdir(parents=True, exist_ok=True)
                (adapter / entry["name"]).write_bytes(api.get(entry["url"]).content)
    assert {"config.json", "tokenizer.json", "generation_config.json"} <= \
        {e["name"] for e in done["files"]}

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the code word for clouds?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        got = merged.generate(prompt, max_new_tokens=12, do_sample=False)
    del merged
    base = AutoModelForCausalLM.from_pretrained(str(MODEL_STORE / "smollm2-135m-instruct"))
    reference = PeftModel.from_pretrained(base, str(adapter / "lora")).eval()
    with torch.no_grad():
        expected = reference.generate(prompt, max_new_tokens=12, do_sample=False)
    assert got.tolist() == expected.tolist()


def test_dashboard_registers_tests_and_exports(dev, finished, browser):  # noqa: ANN001
    """The dashboard's webhooks page (secret shown once, a test event delivered and logged)
    and the job page's export button (a bfloat16 merged folder listed with its files)."""
    context, page, watched = open_page(browser, dev)
    try:
        with Receiver() as hook:
            sign_in(page, dev)
            go(page, dev, "/webhooks")
            page.fill("#webhook-url", hook.url + "/dash")
            page.click("form button[type=submit]")
            secret = page.wait_for_selector("[data-field=secret] code").inner_text()
            assert secret.startswith("whsec_")
            row = page.locator("tr", has_text=hook.url + "/dash")
            row.get_by_role("button", name="Send test").click()
            [request] = hook.wait_for(1, timeout=60)
            assert Webhook(secret).verify(request.body, request.headers)["type"] == "webhook.test"
            page.wait_for_timeout(1000)  # the delivery's result is recorded after the answer
            row.get_by_role("button", name="Deliveries").click()
            page.wait_for_selector("text=webhook.test")
            assert "HTTP 200" in page.inner_text("main")

        go(page, dev, f"/jobs/{finished['job_id']}")
        page.get_by_role("button", name="Export merged weights").click()
        page.locator("dialog button[value=confirm]").click()
        # The float32 export of the API test is listed too; this one is the bfloat16 one.
        mine = '[data-export]:has-text("merged · bfloat16")'
        page.wait_for_selector(f"{mine} .badge[data-status=succeeded]", timeout=600_000)
        exported = page.inner_text(mine)
        assert "config.json" in exported and "$0.01 charged" in exported  # the SmolLM2 fee
    finally:
        context.close()
    watched.check()
