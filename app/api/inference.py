"""A completion through the API: resolve the model, admit (hold or allowance), stream from the
engine (serving.client.EngineClient), settle. The API process generates nothing.

The engine is always called in streaming mode, also for a client that asked for one JSON
answer: its keep-alives bound every wait (`engine_timeout_s` between two events), where a
plain response would only arrive at the end of the generation. A client that goes away
stops the generation: the engine call is cancelled, which closes its connection, which the
engine turns into a cancel (streaming or not). What the engine generated before that is
billed: the prompt, and the completion text the API had received.

The engine call starts before the admission commits, so the admission's round trips to the
database overlap the engine's tokenising and prefill instead of adding to every request's
time to the first token (they were about half of what the API added,
bench/inference_api_hop.py). Nothing the engine writes reaches the client until the
admission has succeeded; a refused admission cancels the engine call and is answered as
before (402, 429, 400), billed nothing. What that costs is engine time spent on refused
requests, bounded per account: after a refusal, that account's requests are admitted first
for a minute (`_may_start_early`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app.api.deps import open_session
from app.api.detached import DetachedTasks
from app.db.session import session_scope
from app.domain.errors import Conflict, DomainError, InvalidRequest, ServiceUnavailable
from app.domain.ids import random_chars
from app.domain.principal import Principal
from app.schemas.inference import ChatCompletionCreate, CompletionCreate
from app.services import inference_metering, inference_targets
from app.services.inference_targets import Target
from app.settings import Settings
from serving.client import EngineClient
from serving.errors import AdapterIncompatible, AdapterNotFound, EngineBusy, EngineError
from serving.errors import InvalidRequest as EngineInvalidRequest
from serving.requests import StreamEvent

log = logging.getLogger(__name__)

TARGET_TTL_S = 5.0
MAX_CACHED_TARGETS = 10_000
DOMAIN_HEADER = "x-crma-domain"


# -- engines and resolved models, per API process ----------------------------------------------
def engine_for(request: Request, base_model: str) -> EngineClient:
    """The engine client for `base_model` (one per URL, kept by the app)."""
    state = request.app.state
    settings: Settings = state.settings
    url = settings.engine_urls.get(base_model, settings.engine_url)
    clients: dict[str, EngineClient] | None = getattr(state, "engine_clients", None)
    if clients is None:
        clients = state.engine_clients = {}
    client = clients.get(url)
    if client is None:
        client = clients[url] = EngineClient(
            url, timeout=settings.engine_timeout_s,
            connect_timeout=settings.engine_connect_timeout_s,
            retry_after_s=settings.engine_retry_after_s)
    return client


async def close_engines(app: Any) -> None:
    clients = getattr(app.state, "engine_clients", None) or {}
    app.state.engine_clients = {}
    for client in clients.values():
        await client.aclose()


_targets: dict[tuple[str, str, str | None], tuple[Target, float]] = {}


def _cached_target(account_id: str, model: str, domain: str | None) -> Target | None:
    hit = _targets.get((account_id, model, domain))
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    return None


def _resolve(settings: Settings, store: Any, account_id: str, model: str,
             domain: str | None) -> Target:
    """A cache miss (the caller asked `_cached_target` first): look it up and remember it."""
    key = (account_id, model, domain)
    with session_scope(settings.resolved_database_url, settings.db_timeout_s) as session:
        target = inference_targets.resolve(session, account_id=account_id, model=model,
                                           store=store, domain=domain)
    if len(_targets) >= MAX_CACHED_TARGETS:
        _targets.clear()
    # Briefly: a continual run's next stage changes its domains.
    _targets[key] = (target, time.monotonic() + TARGET_TTL_S)
    return target


# -- starting the engine before the admission commits -------------------------------------
REFUSED_TTL_S = 60.0
MAX_REFUSED_ACCOUNTS = 10_000
_refused_until: dict[str, float] = {}


def _may_start_early(principal: Principal, target: Target) -> bool:
    """Whether the engine may start before the admission commits: not for a free account on
    a paid model (its admission refuses it), nor for an account refused in the last minute,
    so a caller without credit or allowance keeps the engine busy for at most one request
    per minute (per API process) before each of its refusals."""
    if principal.plan == "free" and not target.base_model.free_tier:
        return False
    until = _refused_until.get(principal.account_id)
    return until is None or until <= time.monotonic()


def _refused(account_id: str) -> None:
    if len(_refused_until) >= MAX_REFUSED_ACCOUNTS:
        _refused_until.clear()
    _refused_until[account_id] = time.monotonic() + REFUSED_TTL_S


async def _abandon(early: asyncio.Future | None, events: AsyncIterator[StreamEvent]) -> None:
    """Stop an engine call started early: cancel its first read, then close the stream
    (which closes the connection, which cancels the generation in the engine)."""
    if early is not None:
        early.cancel()
        await asyncio.wait({early})
        if not early.cancelled():
            early.exception()  # retrieved: an engine error is moot once admission refused
    await events.aclose()


# -- one call --------------------------------------------------------------------------------
@dataclass
class Call:
    """What one request asks, whichever endpoint it came through."""

    chat: bool
    body: ChatCompletionCreate | CompletionCreate
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{random_chars(24)}"

    def engine_input(self) -> dict[str, Any]:
        body = self.body
        if isinstance(body, ChatCompletionCreate):
            return {"messages": [m.model_dump(exclude_none=True) for m in body.messages]}
        return {"prompt": body.prompt_text}

    def prompt_bytes(self) -> tuple[int, int]:
        """(UTF-8 bytes of the prompt text, messages)."""
        body = self.body
        if isinstance(body, ChatCompletionCreate):
            texts = [m.content if isinstance(m.content, str) else
                     "".join(p.text for p in m.content) for m in body.messages]
            return sum(len(t.encode()) for t in texts), len(texts)
        return len(body.prompt_text.encode()), 0


def _engine_request(call: Call, target: Target) -> dict[str, Any]:
    body = call.body
    request = {"model": target.base_model.id, "request_id": call.id, **call.engine_input(),
               **target.engine_fields()}
    for name in ("temperature", "top_p", "stop", "seed"):
        value = getattr(body, name)
        if value is not None:
            request[name] = value
    if body.token_limit is not None:
        request["max_tokens"] = body.token_limit
    return request


def _from_engine(error: EngineError, target: Target) -> DomainError:
    """An engine error as the API answers it."""
    if isinstance(error, EngineBusy):
        return ServiceUnavailable(error.message, code=error.code,
                                  retry_after_s=error.retry_after_s or 1)
    if error.code == "model_mismatch":
        return ServiceUnavailable(f"No inference engine serves {target.base_model.id} on this "
                                  "installation.", code="model_not_served", retry_after_s=30)
    if isinstance(error, AdapterNotFound | AdapterIncompatible):
        what = ("this checkpoint has no servable adapter (checkpoints saved before serving "
                "was added have none)" if target.kind == "checkpoint"
                else "its adapter files cannot be served")
        return Conflict(f"{target.name}: {what}.", param="model", code="model_not_servable")
    if isinstance(error, EngineInvalidRequest):
        return InvalidRequest(error.message, param=error.param, code=error.code)
    log.warning("engine error %s: %s", error.status_code, error.message)
    return ServiceUnavailable("The inference engine failed to answer; retry shortly.",
                              code="engine_error", retry_after_s=5)


async def complete(request: Request, principal: Principal,
                   body: ChatCompletionCreate | CompletionCreate) -> Response:
    """The whole request (see the module docstring)."""
    state = request.app.state
    settings: Settings = state.settings
    call = Call(chat=isinstance(body, ChatCompletionCreate), body=body)
    # A model resolved in the last seconds costs no thread hop and no query.
    target = _cached_target(principal.account_id, body.model, body.domain) or \
        await run_in_threadpool(_resolve, settings, state.store, principal.account_id,
                                body.model, body.domain)
    bound = target.base_model.max_output_tokens
    if body.token_limit is not None and body.token_limit > bound:
        raise InvalidRequest(f"{body.token_limit_field} is at most {bound} for {body.model} "
                             f"(its base model {target.base_model.id}); got {body.token_limit}.",
                             param=body.token_limit_field)
    prompt_bytes, messages = call.prompt_bytes()
    reserved = inference_metering.reservation(
        prompt_bytes=prompt_bytes, messages=messages,
        max_new_tokens=body.token_limit or bound)
    engine = engine_for(request, target.base_model.id)
    events = engine.stream(_engine_request(call, target))
    # The engine starts on the prompt while the admission commits (see the module
    # docstring); nothing it writes reaches the client before the admission succeeds.
    early = asyncio.ensure_future(anext(events)) if _may_start_early(principal, target) \
        else None
    try:
        # On the event loop where the driver allows it (app/db/transactions.py): a worker
        # thread would wait for the GIL at each round trip.
        admission = await state.admissions.run(lambda open_session: _admit(
            open_session, settings, principal, call, target, reserved))
    except BaseException as error:
        with anyio.CancelScope(shield=True):
            await _abandon(early, events)
        if isinstance(error, DomainError):
            _refused(principal.account_id)
        raise
    headers = admission.allowance.headers() if admission.allowance else {}
    settle = _Settlement(settings, call.id, state.detached)
    try:
        first = await (early if early is not None else anext(events))
        if first.type == "error":
            raise first.error if isinstance(first.error, EngineError) else EngineError(
                str(first.error))
    except EngineError as error:
        await events.aclose()
        await settle.now("failed")
        raise _from_engine(error, target) from None
    except BaseException:
        await events.aclose()
        await settle.now("failed")
        raise
    settle.prompt_tokens = first.usage.prompt_tokens if first.usage else 0
    # Routed by the engine, or chosen here (the request's domain: one adapter is sent).
    first.domain = first.domain or target.domain
    if first.domain:
        headers[DOMAIN_HEADER] = first.domain
    if body.stream:
        return StreamingResponse(_stream(call, target, first, events, settle),
                                 media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    return await _whole(request, call, target, first, events, settle, headers)


def _admit(open_session: Callable[[], Session], settings: Settings, principal: Principal,
           call: Call, target: Target, reserved: int) -> inference_metering.Admission:
    """The admission in one committed transaction (a Transactions work: it owns the session)."""
    session = open_session()
    try:
        admission = inference_metering.admit(
            session, account_id=principal.account_id, plan=principal.plan,
            request_id=call.id, model=call.body.model, base=target.base_model,
            reserved_tokens=reserved,
            prices=settings.inference_prices_micros_per_mtok,
            free_tokens_per_day=settings.free_inference_tokens_per_day)
        session.commit()
        return admission
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class _Settlement:
    """The request's settlement, once, whatever ends it (shielded from cancellation: a
    client that went away must not leave the hold in place). A request that got its answer
    is settled after it (`after_response`, outside the request: app/api/detached.py); one
    that failed before its answer is settled before the error goes out (`now`), so the
    error's sender sees the hold released."""

    def __init__(self, settings: Settings, request_id: str, detached: DetachedTasks) -> None:
        self.settings = settings
        self.detached = detached
        self.request_id = request_id
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.domain: str | None = None
        self.done = False

    def run(self, status: str) -> None:
        if self.done:
            return
        self.done = True
        try:
            with open_session(self.settings) as session:
                inference_metering.settle(
                    session, request_id=self.request_id, prompt_tokens=self.prompt_tokens,
                    completion_tokens=self.completion_tokens, status=status,
                    domain=self.domain, prices=self.settings.inference_prices_micros_per_mtok)
                session.commit()
        except Exception:  # noqa: BLE001 - the stale-request sweep settles it later
            log.exception("settling inference request %s failed", self.request_id)

    async def now(self, status: str) -> None:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(self.run, status)

    def after_response(self, status: str) -> None:
        self.detached.spawn(run_in_threadpool(self.run, status))

    async def after_response_async(self, status: str) -> None:
        """`after_response` as a BackgroundTask (a sync one would run in a worker thread,
        away from the event loop it spawns on)."""
        self.after_response(status)


def _finished(settle: _Settlement, event: StreamEvent) -> None:
    if event.usage is not None:
        settle.prompt_tokens = event.usage.prompt_tokens
        settle.completion_tokens = event.usage.completion_tokens


def _usage(settle: _Settlement) -> dict[str, int]:
    return {"prompt_tokens": settle.prompt_tokens,
            "completion_tokens": settle.completion_tokens,
            "total_tokens": settle.prompt_tokens + settle.completion_tokens}


async def _whole(request: Request, call: Call, target: Target, first: StreamEvent,
                 events: AsyncIterator[StreamEvent], settle: _Settlement,
                 headers: dict[str, str]) -> Response:
    settle.domain = first.domain

    async def collect() -> tuple[str, StreamEvent]:
        parts = []
        async for event in events:
            if event.type == "delta":
                parts.append(event.text)
                settle.completion_tokens += 1  # at least one token per delta
            elif event.type == "error":
                raise event.error if isinstance(event.error, EngineError) else \
                    EngineError(str(event.error))
            elif event.type == "done":
                return "".join(parts), event
        raise EngineError("the engine ended the generation without finishing it")

    generation = asyncio.ensure_future(collect())
    disconnected = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({generation, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not generation.done():
            generation.cancel()
        disconnected.cancel()
    try:
        text, done = await generation
    except asyncio.CancelledError:
        await events.aclose()
        await settle.now("cancelled")
        return Response(status_code=499)  # nobody reads it: the client is gone
    except EngineError as error:
        await events.aclose()
        await settle.now("failed")
        raise _from_engine(error, target) from None
    _finished(settle, done)
    choice: dict[str, Any] = {"index": 0, "finish_reason": done.finish_reason, "logprobs": None}
    if call.chat:
        choice["message"] = {"role": "assistant", "content": text, "refusal": None}
    else:
        choice["text"] = text
    body = {"id": call.id, "object": "chat.completion" if call.chat else "text_completion",
            "created": call.created, "model": call.body.model, "choices": [choice],
            "usage": _usage(settle), "system_fingerprint": None, "domain": settle.domain}
    # Spawned once the body is out (a BackgroundTask that only spawns: it returns at once).
    return JSONResponse(body, headers=headers,
                        background=BackgroundTask(settle.after_response_async, "completed"))


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the request body was read already, so the next
    ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def _chunk(call: Call, settle: _Settlement, *, text: str | None, finish: str | None,
           first: bool = False) -> dict[str, Any]:
    if call.chat:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta}
    else:
        choice = {"index": 0, "text": text or ""}
    choice.update(finish_reason=finish, logprobs=None)
    chunk = {"id": call.id, "object": "chat.completion.chunk" if call.chat else "text_completion",
             "created": call.created, "model": call.body.model, "choices": [choice],
             "system_fingerprint": None, "domain": settle.domain}
    if call.body.include_usage:
        chunk["usage"] = None
    return chunk


async def _stream(call: Call, target: Target, first: StreamEvent,
                  events: AsyncIterator[StreamEvent], settle: _Settlement) -> AsyncIterator[bytes]:
    """OpenAI's chunks from the engine's events; `data: [DONE]` at the end."""
    settle.domain = first.domain
    status = "cancelled"  # unless it ends below: the client went away (or the task died)
    try:
        if call.chat:  # OpenAI's first chunk: the role, empty content
            yield _sse(_chunk(call, settle, text="", finish=None, first=True))
        async for event in events:
            if event.type == "delta":
                settle.completion_tokens += 1
                yield _sse(_chunk(call, settle, text=event.text, finish=None))
            elif event.type == "done":
                _finished(settle, event)
                yield _sse(_chunk(call, settle, text=None if call.chat else "",
                                  finish=event.finish_reason))
                if call.body.include_usage:
                    yield _sse({"id": call.id, "object": _chunk(call, settle, text=None,
                                                                  finish=None)["object"],
                                "created": call.created, "model": call.body.model,
                                "choices": [], "usage": _usage(settle),
                                "system_fingerprint": None, "domain": settle.domain})
                status = "completed"
                yield _sse("[DONE]")
                return
            elif event.type == "error":
                error = event.error if isinstance(event.error, EngineError) else \
                    EngineError(str(event.error))
                status = "failed"
                mapped = _from_engine(error, target)
                yield _sse({"error": {"message": mapped.message, "type": mapped.error_type,
                                      "param": mapped.param, "code": mapped.code}})
                return
        status = "failed"
        yield _sse({"error": {"message": "The engine ended the generation early.",
                              "type": "server_error", "param": None, "code": "engine_error"}})
    except EngineError as error:
        status = "failed"
        mapped = _from_engine(error, target)
        yield _sse({"error": {"message": mapped.message, "type": mapped.error_type,
                              "param": mapped.param, "code": mapped.code}})
    finally:
        with anyio.CancelScope(shield=True):
            await events.aclose()
        settle.after_response(status)


# -- requests whose API process died ---------------------------------------------------------
SWEEP_EVERY_S = 60.0


def _expire_stale(settings: Settings) -> int:
    with session_scope(settings.resolved_database_url, settings.db_timeout_s) as session:
        return inference_metering.expire_stale(
            session, older_than_s=settings.inference_stale_after_s,
            prices=settings.inference_prices_micros_per_mtok)


async def sweep_stale_requests(settings: Settings) -> None:
    """Forever: settle requests left `running` past `inference_stale_after_s` (nothing
    charged, holds and reservations given back). Any API process may run it."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        try:
            expired = await run_in_threadpool(_expire_stale, settings)
        except Exception:  # noqa: BLE001 - a database blip: next round
            log.warning("sweeping stale inference requests failed", exc_info=True)
            continue
        if expired:
            log.warning("expired %d inference requests left running", expired)
