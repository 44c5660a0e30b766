"""bench/uploads.py in its tiny mode against a real server: every upload is accepted with the
right counts and the result has every figure docs/benchmarks/uploads.json reports (no speed is
asserted: the bench measures, the machine may be busy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import uploads

pytestmark = pytest.mark.integration


def test_tiny_run_reports_every_figure(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "uploads.json"
    assert uploads.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    kinds = {"chat", "prompt_completion", "text", "short_lines"}
    assert set(result["files"]) == set(result["validator"]) == set(result["uploads"]) == kinds
    assert result["files"]["short_lines"]["lines"] == uploads.SHORT_LINES[1]
    for kind in kinds:  # rates rounded to 0.1 MB/s: 0.0 on a slow enough machine
        assert result["validator"][kind]["mb_s_wall"] >= 0
        assert result["uploads"][kind]["mb_s"] >= 0 and result["uploads"][kind]["seconds"] > 0
    assert set(result["targets"]) == {"validation_mb_s_at_least_30",
                                      "api_rss_growth_mib_at_most_64",
                                      "reads_p99_ms_below_50_during_upload"}
    assert set(result["api_rss_growth_mib"]) == {"chat", "short_lines",
                                                 "first_upload_of_the_process"}
    reads = result["reads"]
    assert reads["errors"] == 0
    for phase in ("idle", "during_upload"):
        for path in uploads.READ_PATHS:
            stats = reads[phase][path]
            assert stats["n"] > 0 and stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert "NaN" not in out.read_text()
