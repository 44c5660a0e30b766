"""The base models you can fine-tune, with prices and availability."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import PrincipalDep, SettingsDep, StoreDep
from app.api.presenters import model_public
from app.schemas.common import error_responses
from app.schemas.models import ModelList, ModelPublic
from app.services import models

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList, responses=error_responses(401))
def list_models(_: PrincipalDep, settings: SettingsDep, store: StoreDep) -> ModelList:
    """List the base models: size, context, price per 1M tokens, free tier, availability."""
    offers = models.list_models(model_store_dir=settings.resolved_model_store_dir, store=store,
                                prices=settings.prices_micros_per_mtok)
    return ModelList(data=[model_public(o) for o in offers])


@router.get("/{model_id}", response_model=ModelPublic, responses=error_responses(401, 404))
def retrieve_model(model_id: str, _: PrincipalDep, settings: SettingsDep,
                   store: StoreDep) -> ModelPublic:
    """Retrieve one base model."""
    offer = models.get_model(model_id, model_store_dir=settings.resolved_model_store_dir,
                             store=store, prices=settings.prices_micros_per_mtok)
    return model_public(offer)
