"""The import contract of docs/architecture.md (pyproject.toml, [tool.importlinter]) holds on
the real import graph, and it does catch what it forbids: an import cycle added to a copy of
the tree breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker", "serving", "crma_core", "crma_cli")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages under `root`, with the project's contracts."""
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache",
               str(root / "pyproject.toml")]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def copy_tree(target: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "web"))
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def test_the_import_contract_holds() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_cycle_breaks_it(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    assert lint_imports(tree).returncode == 0
    # job_status is imported by leases; a function-level import back closes a cycle.
    status = tree / "app" / "services" / "job_status.py"
    status.write_text(status.read_text() + "\n\ndef _back() -> None:\n"
                      "    from app.services import leases  # noqa: F401\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "No import cycle anywhere" in result.stdout and "BROKEN" in result.stdout
    assert "cycle" in result.stdout and ".leases -> .job_status" in result.stdout


def test_a_layer_violation_breaks_it(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    runner = tree / "worker" / "runner.py"
    runner.write_text(runner.read_text() + "\nfrom app.db.session import session_scope  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "worker is not allowed to import app.db" in result.stdout


def writes_job_status(text: str) -> bool:
    """An UPDATE of the jobs table that sets `status`, or `job.status = ...` on a row."""
    import re

    update = re.compile(r"update\((?:Job|_jobs|Job\.__table__)\)(.{0,600}?)\.values\(([^)]*)",
                        re.S)
    return (any("status" in values for _, values in update.findall(text))
            or re.search(r"\bjob\.status\s*=[^=]", text) is not None)


def test_one_writer_of_a_jobs_status() -> None:
    """Only `transition_job` (app/services/job_status.py) changes a job's status."""
    sources = sorted((ROOT / "app").rglob("*.py")) + sorted((ROOT / "worker").rglob("*.py"))
    writers = [str(path.relative_to(ROOT)) for path in sources
               if path.name != "job_status.py" and writes_job_status(path.read_text())]
    assert writers == []
    transition = (ROOT / "app" / "services" / "job_status.py").read_text()
    assert '"status": to.value' in transition and "update(Job)" in transition
    assert writes_job_status("update(Job).where(Job.id == x).values(status='running')")
    assert writes_job_status("    job.status = 'failed'\n")
    assert not writes_job_status("update(Job).where(Job.status == 'running').values(a=1)")
