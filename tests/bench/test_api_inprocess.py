"""bench/api_inprocess.py measures every hot route on a scratch database and cleans up."""

from __future__ import annotations

import json


def test_in_process_benchmark_measures_every_route(pg_url: str, tmp_path) -> None:  # noqa: ANN001
    import psycopg

    from bench import api_inprocess

    def scratch_databases() -> set[str]:
        with psycopg.connect(api_inprocess.PG_ADMIN_URL) as connection:
            return {row[0] for row in connection.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'crma_inprocess_%'")}

    before = scratch_databases()
    out = tmp_path / "api_inprocess.json"
    assert api_inprocess.main(["--requests", "5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["routes"]) == {"healthz", "retrieve_job", "list_jobs_10", "list_events",
                                     "create_job"}
    for name, figures in result["routes"].items():
        assert 0 < figures["cpu_ms"] <= figures["wall_ms"] * 3, name
        assert len(figures["rounds_cpu_ms"]) == 3
    assert scratch_databases() == before
