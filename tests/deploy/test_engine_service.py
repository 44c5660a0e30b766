"""The inference engine's compose service, checked by parsing (Docker cannot run here)."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["engine"]


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_engine_runs_crma_engine_on_its_port(engine):
    from crma_cli.engine import register

    command = engine["command"]
    assert command[:2] == ["crma", "engine"]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(command[1:])  # every flag is one `crma engine` accepts
    assert args.adapter_source == "store"  # adapters come from the object store
    port = _flag(command, "--port")
    assert engine["expose"] == [port]
    assert f"127.0.0.1:{port}/healthz" in " ".join(engine["healthcheck"]["test"])


def test_the_engine_is_not_published(engine):
    """No authentication: reachable on the compose network only."""
    assert "ports" not in engine


def test_the_engine_reads_the_store_and_models(engine):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = dict(engine["environment"])
    # Its compiled decode step's artifacts on the cache volume (a warm restart).
    inductor_cache = environment.pop("TORCHINDUCTOR_CACHE_DIR")
    assert environment == compose["x-app-env"]
    assert engine["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert "models:/models:ro" in engine["volumes"]
    cache_mount = next(v for v in engine["volumes"] if v.startswith("cache:")).split(":")[1]
    assert inductor_cache.startswith(cache_mount + "/")


def test_the_engine_has_time_to_compile_before_it_counts_as_unhealthy(engine):
    """It compiles its decode step before serving (1-2 minutes on a small CPU)."""
    seconds = int(engine["healthcheck"]["start_period"].rstrip("s"))
    assert seconds >= 180


def test_the_image_holds_every_package():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\w+) ", (ROOT / "Dockerfile.gpu").read_text(), re.M))
    assert {p.rstrip("*") for p in packages} <= copied


def test_the_api_calls_the_engine_service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    url = compose["services"]["api"]["environment"]["CRMA_ENGINE_URL"]
    engine = compose["services"]["engine"]
    port = engine["command"][engine["command"].index("--port") + 1]
    assert url == f"http://engine:{port}"


def test_the_image_can_compile_the_decode_step():
    """Inductor builds the compiled decode step's CPU kernels with a C++ compiler against
    Python's headers (without them the engine logs the failure and decodes eagerly)."""
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    installs = " ".join(re.findall(r"apt-get install[^\n]*(?:\\\n[^\n]*)*", dockerfile))
    assert "build-essential" in installs and "python3-dev" in installs
