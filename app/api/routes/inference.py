"""Calling a model (OpenAI-compatible): POST /v1/chat/completions and /v1/completions, with
`stream: true` as server-sent events. A bad field is a 400 naming it, as OpenAI answers
(not the 422 of the rest of this API: the official client and its users expect 400 here)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from app.api.deps import PrincipalDep
from app.api.errors import _param_path
from app.api.inference import complete
from app.domain.errors import InvalidRequest
from app.schemas.common import error_responses
from app.schemas.inference import (
    STREAM_DESCRIPTION,
    ChatCompletionCreate,
    ChatCompletionOut,
    CompletionCreate,
    CompletionOut,
)


class BadRequestRoute(APIRoute):
    """A body that does not validate is a 400 `invalid_request_error` naming the field."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def validating_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as error:
                issues = error.errors()
                first = issues[0] if issues else {"loc": (), "msg": "invalid request"}
                param = _param_path(tuple(first.get("loc", ())))
                message = str(first["msg"]).removeprefix("Value error, ")
                # The pydantic error type as the code, as every other route reports it.
                raise InvalidRequest(f"{param}: {message}" if param else message, param=param,
                                     code=str(first.get("type") or "invalid_value")) from None

        return validating_handler


router = APIRouter(prefix="/v1", tags=["inference"], route_class=BadRequestRoute)

_RESPONSES = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                    "description": "The completion (JSON), or with `stream: true` its chunks."},
              **error_responses(400, 401, 402, 404, 409, 429, 503)}


@router.post("/chat/completions", response_model=ChatCompletionOut, responses=_RESPONSES,
             summary="Chat with a fine-tuned model, a continual run's model or a base model",
             description=STREAM_DESCRIPTION)
async def create_chat_completion(body: ChatCompletionCreate, request: Request,
                                 principal: PrincipalDep) -> Response:
    return await complete(request, principal, body)


@router.post("/completions", response_model=CompletionOut, responses=_RESPONSES,
             summary="Continue a text prompt (OpenAI's legacy completions)",
             description=STREAM_DESCRIPTION)
async def create_completion(body: CompletionCreate, request: Request,
                            principal: PrincipalDep) -> Response:
    return await complete(request, principal, body)
