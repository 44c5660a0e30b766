"""Models: the base models you can fine-tune (prices, availability) and, next to them, your
fine-tuned models, which /v1/chat/completions and /v1/completions call."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import PrincipalDep, ReadSessionDep, SettingsDep, StoreDep
from app.api.presenters import fine_tuned_model_public, model_public
from app.domain.errors import Conflict
from app.schemas.common import error_responses
from app.schemas.models import AnyModelList, FineTunedModelPublic, ModelPublic
from app.services import inference_targets, model_installs, models
from app.services.inference_targets import FineTunedModel

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=AnyModelList, responses=error_responses(401))
def list_models(principal: PrincipalDep, settings: SettingsDep, store: StoreDep,
                session: ReadSessionDep) -> AnyModelList:
    """List the base models (size, context, prices, free tier, availability), then your
    fine-tuned models and continual runs (`owned_by`: your account)."""
    offers = models.list_models(model_store_dir=settings.resolved_model_store_dir, store=store,
                                prices=settings.prices_micros_per_mtok,
                                installs=model_installs.states(session))
    inference_prices = settings.inference_prices_micros_per_mtok
    own = inference_targets.list_fine_tuned(session, account_id=principal.account_id)
    return AnyModelList(data=[
        *(model_public(o, inference_prices=inference_prices) for o in offers),
        *(fine_tuned_model_public(m, inference_prices=inference_prices) for m in own),
    ])


@router.get("/{model_id}", response_model=ModelPublic | FineTunedModelPublic,
            responses=error_responses(401, 404))
def retrieve_model(model_id: str, principal: PrincipalDep, settings: SettingsDep,
                   store: StoreDep, session: ReadSessionDep) -> ModelPublic | FineTunedModelPublic:
    """Retrieve a base model, or one of your fine-tuned models, checkpoints or continual
    runs by the name completions take (another account's is a 404 `model_not_found`)."""
    inference_prices = settings.inference_prices_micros_per_mtok
    if not model_id.startswith("ft:"):
        offer = models.get_model(model_id, model_store_dir=settings.resolved_model_store_dir,
                                 store=store, prices=settings.prices_micros_per_mtok,
                                 installs=model_installs.states(session, model_ids=[model_id]))
        return model_public(offer, inference_prices=inference_prices)
    try:
        target = inference_targets.resolve(session, account_id=principal.account_id,
                                           model=model_id, store=store)
    except Conflict:  # a job that has not succeeded: its model does not exist yet
        raise inference_targets.not_found(model_id) from None
    return fine_tuned_model_public(
        FineTunedModel(id=target.name, kind=target.kind, base_model=target.base_model.id,
                       owned_by=target.owned_by, created_at=target.created_at,
                       source_id=target.source_id or ""),
        inference_prices=inference_prices, domains=list(target.domains) or None)
