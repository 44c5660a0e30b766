"""GET /v1/models: the catalog with prices from settings and availability from the model
store directory or the object store."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.services import models
from app.storage.factory import open_store
from crma_core.catalog import CATALOG
from tests.app.helpers import Tenant, make_settings

pytestmark = pytest.mark.integration


def test_catalog_prices_and_availability(tmp_path: Path, pg_url: str, tenant: Tenant) -> None:
    from app.main import create_app

    settings = make_settings(tmp_path, pg_url,
                             prices_micros_per_mtok={"tinyllama-1.1b-chat": 250_000,
                                                     "mistral-7b-v0.3": 1_234_567})
    installed = settings.resolved_model_store_dir / "tinyllama-1.1b-chat"
    installed.mkdir(parents=True)
    (installed / "config.json").write_text("{}")
    (installed / "store.json").write_text("{}")
    half = settings.resolved_model_store_dir / "mistral-7b-v0.3"  # an import still staging
    half.mkdir()
    (half / "config.json").write_text("{}")
    models._cache.clear()
    open_store(settings).put_bytes("models/gemma-2-2b-it/store.json", b"{}")
    with TestClient(create_app(settings)) as client:
        listed = client.get("/v1/models", headers=tenant.headers).json()
        by_id = {m["id"]: m for m in listed["data"]}
        assert set(by_id) == set(CATALOG)
        tiny = by_id["tinyllama-1.1b-chat"]
        assert (tiny["available"], tiny["free_tier"], tiny["qlora"]) == (True, True, True)
        price = (tiny["price_per_1m_tokens"], tiny["price_per_1m_tokens_micros"])
        assert price == ("0.25", 250_000)
        assert tiny["parameters"] == 1_100_048_384 and tiny["context_length"] == 2048
        assert by_id["gemma-2-2b-it"]["available"] is True  # published in the object store
        assert by_id["mistral-7b-v0.3"]["available"] is False
        assert by_id["mistral-7b-v0.3"]["price_per_1m_tokens"] == "1.234567"
        one = client.get("/v1/models/mistral-7b-v0.3", headers=tenant.headers)
        assert one.json() == by_id["mistral-7b-v0.3"]
        missing = client.get("/v1/models/gpt-5", headers=tenant.headers)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        assert client.get("/v1/models").status_code == 401
