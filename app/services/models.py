"""The model catalog with prices, availability and install state.

A model is available (`installed`) when it is in the model store directory (crma_core's
ModelStore writes `<model_store_dir>/<id>/store.json` last, so its presence means a complete
install) or published in the object store (`models/<id>/store.json`). Otherwise its state is
its installer's (app/services/model_installs.py): `installing` (jobs created now wait for it),
`failed` (with the error), or `not_installed` when no installer is at work. Object-store
answers are cached briefly: GET /v1/models must not cost an S3 round trip per model per
request."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.domain.errors import NotFound
from app.domain.pricing import format_usd
from app.services.model_installs import InstallState
from app.storage.base import ObjectStore
from app.storage.keys import MODEL_STORE_PREFIX
from crma_core.catalog import CATALOG, CatalogModel

AVAILABILITY_TTL_S = 30.0
STORE_FILE = "store.json"  # crma_core.model_store.STORE_FILE (not imported: keep the API light)


@dataclass(frozen=True)
class ModelOffer:
    model: CatalogModel
    available: bool
    price_micros_per_mtok: int
    status: str = "installed"  # installed | installing | failed | not_installed
    install_error: str | None = None

    @property
    def price_usd(self) -> str:
        return format_usd(self.price_micros_per_mtok)


_cache: dict[tuple[int, str], tuple[bool, float]] = {}
_cache_lock = threading.Lock()


def is_installed(model_store_dir: Path, model_id: str) -> bool:
    return (model_store_dir / model_id / STORE_FILE).is_file()


def is_published(store: ObjectStore, model_id: str) -> bool:
    key = (id(store), model_id)
    with _cache_lock:
        hit = _cache.get(key)
        if hit and hit[1] > time.monotonic():
            return hit[0]
    try:
        published = store.head(f"{MODEL_STORE_PREFIX}{model_id}/{STORE_FILE}") is not None
    except Exception:  # noqa: BLE001 - an unreachable store shows up in /readyz, not here
        published = False
    with _cache_lock:
        _cache[key] = (published, time.monotonic() + AVAILABILITY_TTL_S)
    return published


def list_models(
    *, model_store_dir: Path, store: ObjectStore, prices: dict[str, int],
    installs: Mapping[str, InstallState] | None = None,
) -> list[ModelOffer]:
    """The catalog; `installs` (model_installs.states) gives the state of models not
    available yet."""
    offers = []
    for m in CATALOG.values():
        available = is_installed(model_store_dir, m.id) or is_published(store, m.id)
        install = (installs or {}).get(m.id)
        status, error = "installed", None
        if not available:
            status = install.status if install and install.status != "installed" \
                else "not_installed"
            error = install.error if install and status == "failed" else None
        offers.append(ModelOffer(model=m, available=available, status=status,
                                 install_error=error,
                                 price_micros_per_mtok=int(prices.get(m.id, 0))))
    return offers


def get_model(
    model_id: str, *, model_store_dir: Path, store: ObjectStore, prices: dict[str, int],
    installs: Mapping[str, InstallState] | None = None,
) -> ModelOffer:
    for offer in list_models(model_store_dir=model_store_dir, store=store, prices=prices,
                             installs=installs):
        if offer.model.id == model_id:
            return offer
    raise NotFound(f"The model {model_id!r} does not exist.", param="model", code="model_not_found")
