"""The API load benchmark as a test (marker `load`, run by hand: `pytest -m load tests/load`):
bench/api_load.py against a real multi-worker server on PostgreSQL over loopback, 100 job
creates per second plus status reads as fast as the server answers.

Targets (issue 7): p99 create < 50 ms, >= 1,000 status reads per second, zero errors. The
duration is CRMA_LOAD_DURATION_S (default 120 s, as specified); the figures go to
docs/benchmarks/api_load.json only when CRMA_LOAD_WRITE=1."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.load, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def test_100_creates_per_second_with_status_reads(pg_url: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from bench import api_load

    out = ROOT / "docs" / "benchmarks" / "api_load.json" \
        if os.environ.get("CRMA_LOAD_WRITE") == "1" else tmp_path / "api_load.json"
    args = api_load.parse_args([
        "--duration", os.environ.get("CRMA_LOAD_DURATION_S", "120"),
        "--server-workers", os.environ.get("CRMA_LOAD_SERVER_WORKERS", "2"),
        "--out", str(out),
    ])
    result = api_load.run(args)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in (
        "creates_per_s", "create_p50_ms", "create_p99_ms", "status_reads_per_s", "errors",
        "load_average")}))
    assert result["errors"] == 0, result["error_statuses"]
    assert result["creates_per_s"] >= 98
    assert result["create_p99_ms"] < 50, result
    assert result["status_reads_per_s"] >= 1000, result
