"""Chat and text completions through the API to a real engine process, with the official
`openai` client where a client is involved: JSON and streamed answers, every kind of model
name, routing and domains of a continual run, metering in the ledger and /v1/usage, every bad
input, a client that goes away, and an engine that is down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import openai
import pytest
from sqlalchemy import select

from app.db.models import InferenceRequest, LedgerTransaction
from app.db.session import session_scope
from tests.app.helpers import LiveServer, create_tenant, make_settings

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "hello world how are you"}]
# The tiny base model greedily writes no end-of-sequence token within 1000 tokens.
LONG = {"model": "smollm2-135m-instruct", "prompt": "one two three", "max_tokens": 1000,
        "temperature": 0}


def client_for(api: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0, timeout=60)


def request_row(pg_url: str, request_id: str) -> InferenceRequest:
    deadline = time.monotonic() + 10
    while True:  # settled after the response is sent
        with session_scope(pg_url) as session:
            row = session.get(InferenceRequest, request_id)
            session.expunge_all()
        if row is not None and row.status != "running":
            return row
        assert time.monotonic() < deadline, row.status if row else "no row"
        time.sleep(0.05)


def test_chat_completion_json_and_stream_agree(api, published, pg_url) -> None:
    client = client_for(api, published.tenant.key)
    answer = client.chat.completions.create(model=published.fine_tuned, messages=HELLO,
                                            max_tokens=12, temperature=0)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == published.fine_tuned
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(client.chat.completions.create(
        model=published.fine_tuned, messages=HELLO, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same tokens both ways
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == choice.finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == usage.total_tokens
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"

    row = request_row(pg_url, answer.id)
    assert (row.status, row.prompt_tokens, row.completion_tokens) == (
        "completed", usage.prompt_tokens, usage.completion_tokens)
    assert row.cost_micros > 0 and row.base_model == "smollm2-135m-instruct"


def test_the_adapter_changes_the_answer(api, published) -> None:
    """The fine-tuned model, its checkpoint and the base model answer differently (each
    random adapter moves the greedy tokens), and each the same way twice."""
    client = client_for(api, published.tenant.key)

    def greedy(model: str) -> str:
        return client.completions.create(model=model, prompt="one two three", max_tokens=10,
                                         temperature=0).choices[0].text

    answers = {name: greedy(name) for name in (
        published.fine_tuned, published.checkpoint, "smollm2-135m-instruct")}
    assert len(set(answers.values())) == 3, answers
    assert greedy(published.fine_tuned) == answers[published.fine_tuned]


def test_text_completion_stream(api, published) -> None:
    client = client_for(api, published.tenant.key)
    whole = client.completions.create(model=published.fine_tuned, prompt=["one two three"],
                                      max_tokens=8, temperature=0)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    chunks = list(client.completions.create(model=published.fine_tuned, prompt="one two three",
                                            max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_continual_run_domains_and_routing(api, published) -> None:
    client = client_for(api, published.tenant.key)
    chosen = client.chat.completions.with_raw_response.create(
        model=published.run_model, messages=HELLO, max_tokens=4, temperature=0,
        extra_body={"domain": "astronomy"})
    assert chosen.headers["x-crma-domain"] == "astronomy"
    assert chosen.parse().model_extra["domain"] == "astronomy"
    routed = client.chat.completions.create(model=published.run_model, messages=HELLO,
                                            max_tokens=4, temperature=0)
    assert routed.model_extra["domain"] in ("cooking", "astronomy")
    stream = list(client.chat.completions.create(model=published.run_model, messages=HELLO,
                                                 max_tokens=4, temperature=0, stream=True))
    assert {c.model_extra["domain"] for c in stream} == {routed.model_extra["domain"]}
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(model=published.run_model, messages=HELLO,
                                       extra_body={"domain": "cooking-2"})
    assert wrong.value.body["param"] == "domain" and "astronomy" in wrong.value.body["message"]
    with pytest.raises(openai.BadRequestError) as base:
        client.chat.completions.create(model=published.fine_tuned, messages=HELLO,
                                       extra_body={"domain": "cooking"})
    assert base.value.body["param"] == "domain"


def test_models_lists_and_retrieves_the_tenants_own(api, published, pg_url) -> None:
    client = client_for(api, published.tenant.key)
    listed = {m.id: m for m in client.models.list()}
    assert "smollm2-135m-instruct" in listed and listed["smollm2-135m-instruct"].owned_by == "crma"
    for name in (published.fine_tuned, published.run_model):
        assert listed[name].owned_by == published.tenant.account_id
    assert published.running_job not in listed
    model = client.models.retrieve(published.fine_tuned)  # ':' in the path
    assert (model.id, model.owned_by) == (published.fine_tuned, published.tenant.account_id)
    assert model.model_extra["kind"] == "fine_tune"
    assert client.models.retrieve(published.checkpoint).model_extra["kind"] == "checkpoint"
    run = client.models.retrieve(published.run_model)
    assert run.model_extra["domains"] == ["cooking", "astronomy"]

    stranger = create_tenant(pg_url, plan="pro", credit_micros=1_000_000)
    other = client_for(api, stranger.key)
    for name in (published.fine_tuned, published.checkpoint, published.run_model):
        with pytest.raises(openai.NotFoundError) as missing:
            other.models.retrieve(name)
        assert missing.value.body["code"] == "model_not_found"
        with pytest.raises(openai.NotFoundError) as foreign:
            other.chat.completions.create(model=name, messages=HELLO)
        assert foreign.value.body["code"] == "model_not_found"
    assert published.fine_tuned not in {m.id for m in other.models.list()}


@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5000}, "max_tokens"),
    ({"max_completion_tokens": 5000}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_bad_input_is_a_400_naming_the_field(api, published, body, param) -> None:
    request = {"model": published.fine_tuned, "messages": HELLO, **body}
    response = httpx.post(f"{api.url}/v1/chat/completions", json=request,
                          headers=published.tenant.headers, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param.split("[")[0] in error["message"]


def test_model_errors(api, published) -> None:
    client = client_for(api, published.tenant.key)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):  # the right job id under another base model
        client.chat.completions.create(
            model=published.fine_tuned.replace("smollm2-135m-instruct", "tinyllama-1.1b-chat"),
            messages=HELLO)
    with pytest.raises(openai.ConflictError) as running:
        client.chat.completions.create(model=published.running_job, messages=HELLO)
    assert running.value.body["code"] == "model_not_ready"
    assert "running" in running.value.body["message"]
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model=published.fine_tuned, prompt="one two " * 2000,
                                  max_tokens=4)
    assert long.value.body["code"] == "context_length_exceeded"
    assert "1024" in long.value.body["message"] and long.value.body["param"] == "prompt"


def test_metering_in_the_ledger_and_usage(api, published, pg_url) -> None:
    headers = published.tenant.headers
    before = httpx.get(f"{api.url}/v1/billing/balance", headers=headers).json()
    answer = client_for(api, published.tenant.key).chat.completions.create(
        model=published.fine_tuned, messages=HELLO, max_tokens=6, temperature=0)
    row = request_row(pg_url, answer.id)
    assert row.hold_micros >= row.cost_micros > 0
    after = httpx.get(f"{api.url}/v1/billing/balance", headers=headers).json()
    assert before["available_micros"] - after["available_micros"] == row.cost_micros
    assert after["held_micros"] == before["held_micros"]
    with session_scope(pg_url) as session:
        kinds = sorted(session.scalars(select(LedgerTransaction.kind).where(
            LedgerTransaction.source_id == answer.id)))
    assert kinds == ["capture", "hold", "release"]
    usage = httpx.get(f"{api.url}/v1/usage", headers=headers).json()
    bucket = next(b for b in usage["inference"] if b["model"] == "smollm2-135m-instruct")
    assert bucket["requests"] >= 1 and bucket["prompt_tokens"] >= row.prompt_tokens
    assert usage["total_inference_cost_micros"] >= row.cost_micros
    assert usage["total_cost_micros"] == (usage["total_training_cost_micros"]
                                          + usage["total_inference_cost_micros"])


def test_pro_without_credit_is_a_402(api, published, pg_url) -> None:
    broke = create_tenant(pg_url, plan="pro", credit_micros=0)
    with pytest.raises(openai.APIStatusError) as refused:
        client_for(api, broke.key).chat.completions.create(model="smollm2-135m-instruct",
                                                           messages=HELLO)
    assert refused.value.status_code == 402
    assert refused.value.body["code"] == "insufficient_credit"


def test_free_plan_daily_tokens(pg_url, inference_settings, tmp_path) -> None:
    from app.main import create_app

    settings = inference_settings.model_copy(update={"free_inference_tokens_per_day": 400})
    free = create_tenant(pg_url, plan="free")
    with LiveServer(create_app(settings)) as server:
        client = client_for(server, free.key)
        fitted = client.chat.completions.with_raw_response.create(
            model="smollm2-135m-instruct", messages=HELLO, max_tokens=200)
        assert int(fitted.headers["x-quota-tokens-limit"]) == 400
        with pytest.raises(openai.RateLimitError) as spent:
            client.chat.completions.create(model="smollm2-135m-instruct", messages=HELLO,
                                           max_tokens=300)
        assert spent.value.body["code"] == "inference_quota_exceeded"
        assert int(spent.value.response.headers["retry-after"]) > 0
        assert "x-quota-tokens-remaining" in spent.value.response.headers
        with pytest.raises(openai.BadRequestError) as paid_model:
            client.chat.completions.create(model="mistral-7b-v0.3", messages=HELLO)
        assert paid_model.value.body["code"] == "model_not_available_on_plan"


def test_a_client_that_goes_away_stops_the_generation(api, published, engine_url,
                                                      pg_url) -> None:
    body = {**LONG, "stream": True}
    before = httpx.get(f"{engine_url}/health").json()["scheduler"]
    request_id = None
    with httpx.stream("POST", f"{api.url}/v1/completions", json=body,
                      headers=published.tenant.headers, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                request_id = httpx.Response(200, content=line[6:]).json()["id"]
                break
    deadline = time.monotonic() + 20
    while True:
        scheduler = httpx.get(f"{engine_url}/health").json()["scheduler"]
        cancelled = scheduler["finished"].get("cancelled", 0)
        if scheduler["active"] == 0 and cancelled > before["finished"].get("cancelled", 0):
            break
        assert time.monotonic() < deadline, scheduler
        time.sleep(0.1)
    row = request_row(pg_url, request_id)
    assert row.status == "cancelled" and row.completion_tokens < 1000


def test_non_streaming_client_that_goes_away_stops_it_too(api, published, engine_url) -> None:
    """The client leaves while the engine is generating its answer (seen on the engine's
    /health, not after a fixed delay: on an idle machine the tiny model writes its 1000
    tokens in about a second)."""
    before = httpx.get(f"{engine_url}/health").json()["scheduler"]["finished"]

    async def leave_while_generating() -> bool:
        async with httpx.AsyncClient(timeout=30) as client, \
                httpx.AsyncClient(timeout=5) as probe:
            request = asyncio.create_task(client.post(
                f"{api.url}/v1/completions", json=LONG, headers=published.tenant.headers))
            while not request.done():
                if (await probe.get(f"{engine_url}/health")).json()["scheduler"]["active"]:
                    request.cancel()  # closes the connection mid-request
                    break
                await asyncio.sleep(0.005)
            with contextlib.suppress(asyncio.CancelledError):
                await request
            return request.cancelled()

    assert asyncio.run(leave_while_generating()), "the answer came before the client left"
    deadline = time.monotonic() + 20
    while True:
        scheduler = httpx.get(f"{engine_url}/health").json()["scheduler"]
        if scheduler["active"] == 0 and scheduler["finished"].get("cancelled", 0) > \
                before.get("cancelled", 0):
            break
        assert time.monotonic() < deadline, scheduler
        time.sleep(0.1)


def test_an_engine_that_is_down_is_a_503_with_retry_after(pg_url, tmp_path, published) -> None:
    from app.main import create_app
    from tests.conftest import free_port

    settings = make_settings(tmp_path, pg_url, engine_url=f"http://127.0.0.1:{free_port()}",
                             storage_url=(tmp_path / "objects").as_uri())
    with LiveServer(create_app(settings)) as server:
        client = client_for(server, published.tenant.key)
        balance = httpx.get(f"{server.url}/v1/billing/balance",
                            headers=published.tenant.headers).json()
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as down:
            client.chat.completions.create(model="smollm2-135m-instruct", messages=HELLO)
        assert time.monotonic() - started < 15  # never a hang
        assert down.value.status_code == 503
        assert down.value.body["code"] == "engine_unavailable"
        assert int(down.value.response.headers["retry-after"]) >= 1
        with pytest.raises(openai.APIStatusError) as down_stream:
            client.chat.completions.create(model="smollm2-135m-instruct", messages=HELLO,
                                           stream=True)
        assert down_stream.value.status_code == 503
        after = httpx.get(f"{server.url}/v1/billing/balance",
                          headers=published.tenant.headers).json()
    # Settled as failed: the holds were released, nothing charged (no other test of this
    # tenant runs meanwhile).
    assert (after["available_micros"], after["held_micros"]) == (
        balance["available_micros"], balance["held_micros"])


def test_the_engine_connection_is_kept_alive(engine_url) -> None:
    """Streams read to their end hand the connection back to the pool: requests do not pay a
    new TCP connection each (a consumer that stops at the `done` event included), and a
    stream left early still closes its connection (the engine cancels that generation)."""
    import asyncio

    from serving.client import EngineClient

    body = {"model": "smollm2-135m-instruct", "prompt": "hi", "max_tokens": 2,
            "temperature": 0}

    async def run() -> tuple[list[set[int]], int]:
        transport = httpx.AsyncHTTPTransport()
        pool = transport._pool
        used = []
        async with EngineClient(engine_url, transport=transport) as engine:
            for index in range(4):
                async for event in engine.stream(body):
                    if index % 2 and event.type == "done":
                        break  # what the API's JSON path does
                used.append({id(c) for c in pool.connections if c.is_idle()})
            events = engine.stream(dict(LONG, max_tokens=200))
            await anext(events)
            await events.aclose()  # left early
            return used, len(pool.connections)

    used, left = asyncio.run(run())
    assert len(used[0]) == 1 and used == [used[0]] * 4, used  # one connection, reused
    assert left == 0


def _engine_seen(engine_url: str) -> tuple[int, dict]:
    """(generations the engine has taken in so far, its scheduler's stats)."""
    scheduler = httpx.get(f"{engine_url}/health").json()["scheduler"]
    return (sum(scheduler["finished"].values()) + scheduler["active"]
            + scheduler["waiting"]), scheduler


class _AdmitOnceTheEngineRuns:
    """The app's Transactions, except that an admission waits (up to 10 s) until the engine
    reports a generation in flight: a request only gets through if the API started the
    engine call before its admission committed."""

    def __init__(self, inner, engine_url: str) -> None:
        self.inner, self.engine_url = inner, engine_url
        self.waits = True

    async def run(self, work):
        if self.waits:
            async with httpx.AsyncClient(timeout=5) as probe:
                deadline = time.monotonic() + 10
                while True:
                    scheduler = (await probe.get(f"{self.engine_url}/health")).json()[
                        "scheduler"]
                    if scheduler["active"] or scheduler["waiting"]:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("the engine call had not started")
                    await asyncio.sleep(0.005)
        return await self.inner.run(work)

    async def close(self) -> None:
        await self.inner.close()


def _gated_server(settings, engine_url: str) -> tuple[LiveServer, _AdmitOnceTheEngineRuns]:
    from app.main import create_app

    app = create_app(settings)
    gate = app.state.transactions = _AdmitOnceTheEngineRuns(app.state.transactions, engine_url)
    return LiveServer(app), gate


def test_the_engine_starts_while_the_admission_commits(inference_settings, published,
                                                       engine_url, pg_url) -> None:
    server, _gate = _gated_server(inference_settings, engine_url)
    with server:
        answer = client_for(server, published.tenant.key).completions.create(
            **{**LONG, "max_tokens": 300})
    assert answer.usage.completion_tokens == 300
    assert request_row(pg_url, answer.id).status == "completed"


def test_a_refused_admission_cancels_the_engine_call(inference_settings, engine_url,
                                                     pg_url) -> None:
    """Started early, the engine call of a request its admission refuses is cancelled (the
    tiny model would write for a second); after that refusal, the account's next request is
    admitted before the engine hears of it."""
    broke = create_tenant(pg_url, plan="pro", credit_micros=0)
    server, gate = _gated_server(inference_settings, engine_url)
    with server:
        client = client_for(server, broke.key)
        seen, before = _engine_seen(engine_url)
        with pytest.raises(openai.APIStatusError) as refused:
            client.completions.create(**LONG)
        assert refused.value.status_code == 402
        deadline = time.monotonic() + 20
        while True:
            now_seen, scheduler = _engine_seen(engine_url)
            if scheduler["active"] == 0 and scheduler["finished"].get("cancelled", 0) > \
                    before["finished"].get("cancelled", 0):
                break
            assert time.monotonic() < deadline, scheduler
            time.sleep(0.05)
        assert now_seen == seen + 1
        gate.waits = False
        with pytest.raises(openai.APIStatusError) as again:
            client.completions.create(**LONG)
        assert again.value.status_code == 402
        assert _engine_seen(engine_url)[0] == seen + 1


def test_the_settlement_never_holds_up_the_next_request(inference_settings, published,
                                                        pg_url, monkeypatch) -> None:
    """Settled outside the request: with each settlement taking a second, two answers in a
    row on one keep-alive connection still come back at once, and both are settled after."""
    from app.main import create_app
    from app.services import inference_metering

    settle = inference_metering.settle

    def slow_settle(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        time.sleep(1.0)
        return settle(*args, **kwargs)

    monkeypatch.setattr(inference_metering, "settle", slow_settle)
    body = {"model": "smollm2-135m-instruct", "messages": HELLO, "max_tokens": 2}
    with LiveServer(create_app(inference_settings)) as server, \
            httpx.Client(base_url=server.url, headers=published.tenant.headers,
                         timeout=30) as client:
        client.post("/v1/chat/completions", json=body).raise_for_status()  # warm
        started = time.monotonic()
        ids = []
        for stream in (False, True):
            response = client.post("/v1/chat/completions", json={**body, "stream": stream})
            assert response.status_code == 200
            ids.append(response.json()["id"] if not stream else
                       json.loads(response.text.split("data: ", 2)[1])["id"])
        assert time.monotonic() - started < 1.0
        for request_id in ids:
            assert request_row(pg_url, request_id).status == "completed"
