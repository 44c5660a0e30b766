"""A first job on a real `crma dev` whose model install is still under way (the test-only
install knobs: a tiny random Llama with SmolLM2's real tokenizer and chat template, installed
once the test opens a gate, or failing).

- A job created while the model installs waits (queued, a `model_wait` event, GET /v1/models
  says `installing`) and succeeds once the install lands.
- Trained tokens are billed tokens: a chat job without a system message uploaded once the
  model is installed has estimated_tokens = trained tokens per epoch (what crma_core's own
  data loader makes of the file with transformers' tokenizer) x epochs = the job's
  trained_tokens, and its capture, cost and /v1/usage are the price table x trained tokens.
- An install that fails fails the waiting job with the installer's error, uncharged."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cli.test_dev_children import dev_processes
from tests.conftest import free_port, wait_until_healthy
from tests.smollm2_tokenizer import make_smollm2_like_model, smollm2_tokenizer_dir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
ROWS = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
        for i in range(6)]
EPOCHS = 2


@dataclass
class Dev:
    process: subprocess.Popen
    client: httpx.Client
    log: Path

    def said(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_job(self, job_id: str, status: set[str], timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            if job["status"] in status:
                return job
            assert time.monotonic() < deadline, f"job {job}\n{self.said()[-4000:]}"
            time.sleep(0.5)

    def events(self, job_id: str) -> list[dict]:
        return self.client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                               params={"limit": 100}).json()["data"]

    def model(self) -> dict:
        return self.client.get(f"/v1/models/{MODEL}").json()

    def upload(self) -> dict:
        body = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
        response = self.client.post("/v1/files", data={"purpose": "fine-tune"},
                                    files={"file": ("train.jsonl", body)})
        assert response.status_code == 201, response.text
        return response.json()

    def create(self, file_id: str) -> dict:
        response = self.client.post("/v1/fine_tuning/jobs", json={
            "model": MODEL, "training_file": file_id,
            "hyperparameters": {"n_epochs": EPOCHS, "batch_size": 2}})
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture(scope="module")
def smollm2_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_smollm2_like_model(tmp_path_factory.mktemp("smollm2-like") / "hf")


def start_dev(tmp_path: Path, **knobs: str) -> Iterator[Dev]:
    data_dir, port = tmp_path / "dev-data", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMA_")}
    env.update({
        "CRMA_MODEL_STORE_DIR": str(tmp_path / "models"),  # empty: the install fills it
        "CRMA_RELAY_INTERVAL_S": "0.2", "CRMA_REAPER_INTERVAL_S": "1",
        # Long: a waiting job must start because the install offered it, not by this fallback.
        "CRMA_MODEL_WAIT_RETRY_S": "600",
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **knobs,
    })
    log = tmp_path / "dev.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "crma_cli.main", "dev", "--data-dir", str(data_dir),
         "--port", str(port), "--no-engine"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, 180, describe=lambda: log.read_text()[-3000:])
        key = json.loads((data_dir / "dev-account.json").read_text())["api_key"]
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            yield Dev(process=process, client=client, log=log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in dev_processes(data_dir):
            os.killpg(pid, signal.SIGKILL)


def crma_core_epoch_tokens(path: Path) -> int:
    """What crma_core's data loader trains on in one epoch (transformers' tokenizer)."""
    from transformers import AutoTokenizer

    from crma_core.data import load_examples
    from crma_core.settings import TrainConfig

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()), local_files_only=True)
    rows, _ = load_examples(path, tokenizer, max_seq_len=TrainConfig().max_seq_len)
    return sum(len(row.input_ids) for row in rows)


def test_a_first_job_waits_for_the_install_and_trained_tokens_are_billed_tokens(
        tmp_path: Path, smollm2_like: Path) -> None:
    gate = tmp_path / "install-gate"
    for dev in start_dev(tmp_path, CRMA_TEST_MODEL_INSTALL_FROM=str(smollm2_like),
                         CRMA_TEST_MODEL_INSTALL_GATE=str(gate)):
        assert dev.model()["status"] == "installing" and not dev.model()["available"]
        early_file = dev.upload()  # no tokenizer yet: the heuristic count
        assert early_file["token_estimate_method"]["llama"].startswith("heuristic:")
        early = dev.create(early_file["id"])
        deadline = time.monotonic() + 180  # the worker's start-up on a busy machine
        while not any(e["message"].startswith("Waiting for the base model")
                      for e in dev.events(early["id"])):
            assert time.monotonic() < deadline, dev.said()[-3000:]
            time.sleep(0.3)
        assert dev.client.get(f"/v1/fine_tuning/jobs/{early['id']}").json()["status"] \
            == "queued"
        gate.touch()  # the install goes on and lands
        early = dev.wait_job(early["id"], {"succeeded", "failed", "cancelled"})
        assert early["status"] == "succeeded", early
        assert dev.model()["status"] == "installed"
        price = dev.model()["price_per_1m_tokens_micros"]
        # An estimate from the heuristic is an upper bound; the cost is what was trained.
        assert 0 < early["trained_tokens"] <= early["usage"]["estimated_tokens"]
        assert early["cost_micros"] == math.ceil(early["trained_tokens"] * price / 1e6)

        exact_file = dev.upload()  # now counted with SmolLM2's tokenizer and template
        assert exact_file["token_estimate_method"]["llama"] == f"tokenizer:{MODEL}"
        path = tmp_path / "train.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
        per_epoch = crma_core_epoch_tokens(path)
        estimate = dev.client.post("/v1/fine_tuning/jobs/estimate", json={
            "model": MODEL, "training_file": exact_file["id"],
            "hyperparameters": {"n_epochs": EPOCHS, "batch_size": 2}}).json()
        assert estimate["estimated_tokens"] == per_epoch * EPOCHS
        job = dev.wait_job(dev.create(exact_file["id"])["id"],
                           {"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", job
        assert job["trained_tokens"] == job["usage"]["estimated_tokens"] == per_epoch * EPOCHS
        cost = math.ceil(job["trained_tokens"] * price / 1e6)
        assert job["cost_micros"] == cost and job["usage"]["capped_by"] is None
        ledger = dev.client.get("/v1/billing/ledger", params={"limit": 100}).json()["data"]
        capture = next(t for t in ledger if t["kind"] == "capture" and t["source_id"] == job["id"])
        assert {e["amount_micros"] for e in capture["entries"]} == {cost, -cost}
        usage = dev.client.get("/v1/usage").json()
        training = [row for row in usage["data"] if row["model"] == MODEL]
        assert sum(r["trained_tokens"] for r in training) \
            == job["trained_tokens"] + early["trained_tokens"]
        assert sum(r["cost_micros"] for r in training) == cost + early["cost_micros"]


def test_an_install_that_fails_fails_the_waiting_job_uncharged(tmp_path: Path) -> None:
    error = "simulated: the model wheel could not be downloaded"
    gate = tmp_path / "install-gate"
    for dev in start_dev(tmp_path, CRMA_TEST_MODEL_INSTALL_GATE=str(gate),
                         CRMA_TEST_MODEL_INSTALL_ERROR=error):
        before = dev.client.get("/v1/billing/balance").json()
        job = dev.create(dev.upload()["id"])
        assert dev.client.get("/v1/billing/balance").json()["held_micros"] > 0
        gate.touch()
        job = dev.wait_job(job["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
        assert job["status"] == "failed" and job["error"]["code"] == "model_unavailable"
        assert error in job["error"]["message"] and job["cost_micros"] == 0
        assert dev.model()["status"] == "failed" and dev.model()["install_error"] == error
        after = dev.client.get("/v1/billing/balance").json()
        assert (after["available_micros"], after["held_micros"]) \
            == (before["available_micros"], 0)
