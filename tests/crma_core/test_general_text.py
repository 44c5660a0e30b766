"""The general-text holdout shipped with the product: the file SOURCE.json describes (built by
bench/data/general.py, provenance and licence next to it), and inside the installed package."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from crma_core.continual_config import GENERAL_HOLDOUT_FILE

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_holdout_is_the_one_its_source_describes() -> None:
    source = json.loads((GENERAL_HOLDOUT_FILE.parent / "SOURCE.json").read_text())
    data = GENERAL_HOLDOUT_FILE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == source["holdout_sha256"]
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert len(rows) == source["examples"] == 16
    assert all(set(row) == {"text"} and len(row["text"]) >= 240 for row in rows)
    assert source["licence"].startswith("BSD-3-Clause") and source["package"] == "fortunes"
    readme = (GENERAL_HOLDOUT_FILE.parent / "README.md").read_text()
    assert "BSD-3-Clause" in readme and "bench/data/general.py" in readme


def test_the_wheel_carries_the_holdout(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"crma_core/general_text/holdout.jsonl", "crma_core/general_text/SOURCE.json",
                "crma_core/general_text/README.md"} <= names
        assert archive.read("crma_core/general_text/holdout.jsonl") == \
            GENERAL_HOLDOUT_FILE.read_bytes()
