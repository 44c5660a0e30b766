"""Tenant-scoped object keys: tenants/{account_id}/{kind}/{id}/... Every component is one of
our own ids or a fixed name; user-supplied strings never become part of a key."""

from __future__ import annotations

import re

_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _component(value: str) -> str:
    if not _SAFE_COMPONENT.match(value) or ".." in value:
        raise ValueError(f"unsafe key component: {value!r}")
    return value


def _relative_path(name: str) -> str:
    return "/".join(_component(part) for part in name.split("/"))


def tenant_prefix(account_id: str) -> str:
    return f"tenants/{_component(account_id)}/"


def file_key(account_id: str, file_id: str) -> str:
    return f"{tenant_prefix(account_id)}files/{_component(file_id)}.jsonl"


def job_prefix(account_id: str, job_id: str) -> str:
    return f"{tenant_prefix(account_id)}jobs/{_component(job_id)}/"


def checkpoint_prefix(account_id: str, job_id: str, step: int) -> str:
    return f"{job_prefix(account_id, job_id)}checkpoints/step-{int(step):08d}/"


def artifact_key(account_id: str, owner_id: str, name: str) -> str:
    """`name` is the file's path inside the adapter bundle (e.g. lora/adapter_config.json)."""
    return f"{tenant_prefix(account_id)}artifacts/{_component(owner_id)}/{_relative_path(name)}"


def continual_state_prefix(account_id: str, run_id: str) -> str:
    return f"{tenant_prefix(account_id)}continual/{_component(run_id)}/state/"


MODEL_STORE_PREFIX = "models/"
