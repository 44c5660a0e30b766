"""Docker cannot run on the development machines, so the compose file and the Dockerfile are
kept correct by parsing them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return command if isinstance(command, list) else command.split()


def test_services_present(compose: dict) -> None:
    expected = {"api", "worker", "relay", "reaper", "migrate", "postgres", "redis", "minio", "minio-init"}
    assert expected <= set(compose["services"])


def test_every_dependency_names_a_service(compose: dict) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert rule["condition"] in {
                "service_healthy", "service_completed_successfully", "service_started"
            }
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_migrations_run_before_the_api_and_workers(compose: dict) -> None:
    services = compose["services"]
    assert _command(services["migrate"]) == ["crma", "migrate"]
    for name in ("api", "worker", "relay", "reaper"):
        rule = services[name]["depends_on"]["migrate"]
        assert rule["condition"] == "service_completed_successfully"


def test_datastores_have_healthchecks_and_redis_is_durable(compose: dict) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "minio", "api"):
        assert "test" in services[name]["healthcheck"]
    redis_command = " ".join(_command(services["redis"]))
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command


def test_worker_reserves_a_gpu_and_has_time_to_checkpoint(compose: dict) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    grace = int(re.match(r"(\d+)s", worker["stop_grace_period"]).group(1))
    assert grace >= Settings().lease_ttl_s


def test_minio_bucket_matches_storage_url(compose: dict) -> None:
    env = compose["x-app-env"]
    bucket = env["CRMA_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    init = " ".join(_command(compose["services"]["minio-init"]))
    assert f"local/{bucket}" in init


def test_app_environment_names_real_settings(compose: dict) -> None:
    fields = set(Settings.model_fields)
    for key in compose["x-app-env"]:
        assert key.startswith("CRMA_")
        assert key.removeprefix("CRMA_").lower() in fields, f"{key} is not a Settings field"


def test_webhook_secrets_are_sealed_with_a_key_the_operator_must_set(compose: dict) -> None:
    """Compose refuses to start without the key (no default key is a secret), and what the
    file's comment makes with openssl (32 random bytes, url-safe base64) is a key the
    setting accepts."""
    import base64
    import os

    value = compose["x-app-env"]["CRMA_WEBHOOK_SECRET_KEYS"]
    assert re.fullmatch(r"\$\{CRMA_WEBHOOK_SECRET_KEYS:\?[^}]+\}", value), value
    assert "openssl rand -base64 32 | tr '+/' '-_'" in (ROOT / "docker-compose.yml").read_text()
    key = base64.b64encode(os.urandom(32)).decode().translate(str.maketrans("+/", "-_"))
    assert Settings(webhook_secret_keys=key).webhook_secret_key_list == (key,)


def test_commands_are_registered_cli_subcommands(compose: dict) -> None:
    from crma_cli.main import COMMAND_MODULES

    known = {c for commands in COMMAND_MODULES.values() for c in commands}
    for name, service in compose["services"].items():
        command = _command(service)
        if command[:1] == ["crma"]:
            assert command[1] in known, f"{name}: unknown subcommand {command[1]}"


def test_dockerfile_is_a_cuda_worker_image() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", text, re.M)
    assert "torch==" in text and '".[gpu]"' in text
    assert re.search(r"^USER \w+", text, re.M), "runs as root"
    assert re.search(r'^CMD \["crma", "worker"', text, re.M)
    for directory in re.findall(r"^COPY (\w+) ", text, re.M):
        assert (ROOT / directory).is_dir(), f"Dockerfile copies missing {directory}/"
    assert (ROOT / "migrations" / "env.py").is_file()


def test_long_running_services_are_restarted_and_one_shot_ones_are_not(compose: dict) -> None:
    """A dead worker, relay, reaper or API comes back (docker's restart policy is the
    supervisor in production, as crma_cli/supervisor.py is under `crma dev`)."""
    one_shot = {"migrate", "minio-init"}
    for name, service in compose["services"].items():
        policy = service.get("restart")
        if name in one_shot:
            assert policy == "no", name
        else:
            assert policy in ("always", "unless-stopped"), f"{name} has restart: {policy}"


def test_a_stopped_worker_has_time_for_its_shutdown_window(compose: dict) -> None:
    # SIGTERM starts the warm shutdown (checkpoint, lease handed back); docker's SIGKILL must
    # not come before the worker's own shutdown window has passed.
    grace = int(re.match(r"(\d+)s", compose["services"]["worker"]["stop_grace_period"]).group(1))
    assert grace > Settings().worker_shutdown_grace_s
