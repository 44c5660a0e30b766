"""Runs the README's curl walkthrough, exactly as written, against `crma dev` on a fresh data
directory: upload, estimate, a SmolLM2-135M job on CPU, events, download + sha256 check, peft
load + generation, and a two-domain continual run with its drift report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- walkthrough -->"

def walkthrough_blocks(readme: str) -> list[str]:
    """The fenced blocks that directly follow a walkthrough marker, in order."""
    pattern = re.compile(re.escape(MARKER) + r"\s*```sh\n(.*?)```", re.S)
    return pattern.findall(readme)


def test_readme_has_the_walkthrough_blocks() -> None:
    blocks = walkthrough_blocks((ROOT / "README.md").read_text())
    text = "\n".join(blocks)
    for step in ("/v1/files", "/estimate", "/v1/fine_tuning/jobs", "/events", "/artifacts",
                 "sha256sum -c", "PeftModel.from_pretrained", "/v1/continual/runs",
                 "/v1/chat/completions", "chat.completions.create"):
        assert step in text, step


def _wait_until_ready(base: str, data_dir: Path, server: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    key = None
    while time.monotonic() < deadline:
        assert server.poll() is None, "crma dev exited early"
        account = data_dir / "dev-account.json"
        if key is None and account.is_file():
            key = json.loads(account.read_text())["api_key"]
        if key:
            try:
                models = httpx.get(f"{base}/v1/models/smollm2-135m-instruct",
                                   headers={"Authorization": f"Bearer {key}"}, timeout=5)
                if models.status_code == 200 and models.json()["available"]:
                    return key
            except httpx.HTTPError:
                pass
        time.sleep(2)
    raise AssertionError("crma dev did not become ready with SmolLM2 installed")


def _check_continual_report(run: dict, output: str) -> None:
    """SmolLM2, two domains, `baseline: true`: the report's new fields, as the README shows."""
    assert (run["baseline"], run["drift_budget_pct"]) == (True, 0.5)
    report = run["report"]
    matrix = report["matrix"]
    assert len(matrix) == 2 and all(value is not None for value in matrix[1][:2])
    versus = report["versus_baseline"]
    assert set(versus["backward_pct"]) == {"cooking"}
    assert set(versus["forward_pct"]) == {"cooking", "astronomy"}
    general = report["general_retention"]
    assert general["base_loss"] > 0
    assert set(general["served"]) == set(general["baseline"]) == {"cooking", "astronomy"}
    serving = {entry["domain"]: entry for entry in report["serving"]}
    assert serving["astronomy"]["crma_state"] == "shared"
    assert serving["cooking"]["crma_state"] in ("shared", "own") and serving["cooking"]["reason"]
    assert report["drift_pct"]["cooking"] <= 0.5
    assert all(w["domain"] in ("cooking", "astronomy") for w in report["warnings"])
    for name in ("versus_baseline", "general_retention", "serving", "baseline_tokens",
                 "warnings"):
        assert f'"{name}"' in output, name  # the walkthrough printed it


def _check_served_pair(base: str, headers: dict, run: dict, model_dir: Path,
                       bundle: Path) -> None:
    """A domain's served pair downloaded through the API reproduces its reported loss."""
    from crma_core.data import eval_batches, load_examples
    from crma_core.loader import load_for_generation
    from crma_core.loop import evaluate_loss

    listed = httpx.get(f"{base}/v1/continual/runs/{run['id']}/artifacts", headers=headers)
    for artifact in listed.json()["data"]:
        response = httpx.get(artifact["url"] if artifact["url"].startswith("http")
                             else base + artifact["url"], headers=headers,
                             follow_redirects=True, timeout=60)
        assert response.status_code == 200, artifact["name"]
        (bundle / artifact["name"]).parent.mkdir(parents=True, exist_ok=True)
        (bundle / artifact["name"]).write_bytes(response.content)
    report = run["report"]
    model, tokenizer = load_for_generation(model_dir, bundle, domain="cooking")
    rows, _ = load_examples(ROOT / "examples" / "continual" / "cooking_valid.jsonl", tokenizer,
                            max_seq_len=1024)
    loss = evaluate_loss(model, eval_batches(rows, batch_size=4, pad_id=tokenizer.pad_token_id))
    assert loss == pytest.approx(report["matrix"][-1][0], rel=1e-4)


@pytest.mark.integration
@pytest.mark.e2e
def test_readme_walkthrough_against_crma_dev(tmp_path: Path) -> None:
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    for name in (".venv", "examples"):
        (workdir / name).symlink_to(ROOT / name)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CRMA_DATA_DIR": str(data_dir), "CRMA_URL": base}
    env.pop("CRMA_API_KEY", None)
    log = open(tmp_path / "dev.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "crma_cli.main", "dev", "--data-dir", str(data_dir), "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_ready(base, data_dir, server, timeout=600)
        blocks = walkthrough_blocks((ROOT / "README.md").read_text())
        # The trailer hands the ids the walkthrough made back to this test.
        trailer = 'echo "IDS $CRMA_API_KEY $JOB $RUN"'
        script = "set -euo pipefail\n" + "\n".join([*blocks, trailer])
        result = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True,
                                text=True, timeout=1500)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        assert "peft loaded: PeftModelForCausalLM" in output
        key, job_id, run_id = re.search(r"^IDS (\S+) (\S+) (\S+)$", result.stdout, re.M).groups()
        headers = {"Authorization": f"Bearer {key}"}
        job = httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}", headers=headers).json()
        assert job["status"] == "succeeded" and job["trained_tokens"] > 0
        names = {a["name"] for a in httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}/artifacts",
                                               headers=headers).json()["data"]}
        assert {"lora/adapter_model.safetensors", "crma.safetensors", "manifest.json"} <= names
        assert (workdir / "adapter" / "lora" / "adapter_model.safetensors").is_file()
        run = httpx.get(f"{base}/v1/continual/runs/{run_id}", headers=headers).json()
        assert run["status"] == "succeeded"
        assert [stage["status"] for stage in run["stages"]] == ["succeeded", "succeeded"]
        _check_continual_report(run, output)
        _check_served_pair(base, headers, run, data_dir / "models" / "smollm2-135m-instruct",
                           tmp_path / "run-bundle")
    finally:
        stop_process(server, 60)
        log.close()
