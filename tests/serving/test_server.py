"""The engine's HTTP server as a real `crma engine` process on a free port: generate (JSON
and server-sent events), adapters, health, the error shapes, disconnects that cancel, and a
full queue answering 503 with Retry-After. Also the EngineClient against it."""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest

from serving.client import EngineClient
from serving.errors import AdapterNotFound, EngineUnavailable, InvalidRequest
from tests.conftest import free_port, running_engine
from tests.serving.conftest import spec

LONG = {"prompt": "one two three", "max_tokens": 1000, "temperature": 0}  # no eos in 1000


@pytest.fixture(scope="module")
def server(tiny_dir, adapter_root, tmp_path_factory):
    log = tmp_path_factory.mktemp("engine-log") / "engine.log"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               CRMA_DATA_DIR=str(tmp_path_factory.mktemp("engine-data")))
    with running_engine(["--model-dir", str(tiny_dir), "--model", "tiny-llama",
                         "--adapter-source", "local", "--adapter-root", str(adapter_root),
                         "--max-batch", "2", "--max-waiting", "1", "--threads", "1",
                         "--log-level", "warning"], log=log, env=env) as url:
        yield url


def _idle(url, timeout=20.0):
    """Wait until the engine has no active or waiting generation; returns its health."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(url + "/health").json()
        if health["scheduler"]["active"] == 0 and health["scheduler"]["waiting"] == 0:
            return health
        assert time.monotonic() < deadline, health["scheduler"]
        time.sleep(0.05)


def test_health_describes_model_adapters_and_memory(server):
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["model"]["id"] == "tiny-llama"
    assert health["model"]["context_length"] == 1024
    assert health["memory"]["rss_bytes"] > health["memory"]["model_bytes"] > 0
    assert {"active", "waiting", "max_batch"} <= set(health["scheduler"])
    # CRMA_ENGINE_COMPILE=0 (tests/conftest.py) reached the process's EngineConfig.
    assert health["compiled_decode"]["state"] == "off"


def test_generate_json_and_stream_agree(server):
    async def run():
        async with EngineClient(server) as engine:
            body = {"prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0.8,
                    "seed": 4, "adapter": spec("a1")}
            completion = await engine.generate(body)
            events = [event async for event in engine.stream(body)]
            return completion, events
    completion, events = asyncio.run(run())
    assert events[0].type == "start" and events[0].adapter == "a1"
    assert events[0].usage.prompt_tokens == completion.usage.prompt_tokens
    assert "".join(e.text for e in events if e.type == "delta") == completion.text
    done = events[-1]
    assert done.type == "done" and done.usage == completion.usage
    assert done.finish_reason == completion.finish_reason and completion.adapter == "a1"


def test_the_sse_wire_format(server):
    with httpx.stream("POST", server + "/generate", json=dict(LONG, max_tokens=4,
                                                              stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    events = [json.loads(line[5:]) for line in lines]
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    assert events[-1]["usage"] == {"prompt_tokens": events[0]["prompt_tokens"],
                                   "completion_tokens": 4,
                                   "total_tokens": events[0]["prompt_tokens"] + 4}
    assert events[-1]["finish_reason"] == "length"


def test_adapters_load_list_unload(server):
    async def run():
        async with EngineClient(server) as engine:
            first = await engine.load_adapter(spec("a2"))
            second = await engine.load_adapter(spec("a2"))
            listed = await engine.adapters()
            gone = await engine.unload_adapter("a2")
            with pytest.raises(AdapterNotFound):
                await engine.unload_adapter("a2")
            return first, second, listed, gone
    first, second, listed, gone = asyncio.run(run())
    assert first["cold"] is True and second["cold"] is False and first["crma"] is True
    assert "a2" in [a["id"] for a in listed["adapters"]]
    assert gone == {"id": "a2", "unloaded": True}


@pytest.mark.parametrize("body,status,param,code", [
    ({"prompt": "x", "temperature": 5}, 400, "temperature", None),
    ({"prompt": "x", "nonsense": 1}, 400, "nonsense", "extra_forbidden"),
    ({"messages": [{"role": "user"}]}, 400, "messages.0.content", None),
    ({"prompt": "x", "adapter": spec("missing")}, 404, "adapter", "adapter_not_found"),
    ({"prompt": "x" * 5000}, 400, "prompt", "context_length_exceeded"),
])
def test_errors_have_openai_shape_and_name_the_field(server, body, status, param, code):
    response = httpx.post(server + "/generate", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and (code is None or error["code"] == code)


def test_malformed_bodies_and_unknown_routes(server):
    response = httpx.post(server + "/generate", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert httpx.post(server + "/generate", json=[1, 2]).status_code == 400
    assert httpx.get(server + "/nowhere").json()["error"]["code"] == "not_found"
    assert httpx.get(server + "/generate").status_code == 405
    assert httpx.delete(server + "/adapters/never").status_code == 404


def _cancelled(health):
    return health["scheduler"]["finished"].get("cancelled", 0)


def test_a_client_that_disconnects_mid_stream_stops_the_generation(server):
    before = _cancelled(_idle(server))
    with httpx.stream("POST", server + "/generate", json=dict(LONG, stream=True)) as response:
        for line in response.iter_lines():
            if '"delta"' in line:
                break
    health = _idle(server)
    assert _cancelled(health) == before + 1  # ended as cancelled, not after its 1000 tokens
    steps = health["scheduler"]["steps"]
    time.sleep(0.3)
    assert httpx.get(server + "/health").json()["scheduler"]["steps"] == steps


def test_a_client_that_gives_up_on_json_stops_the_generation(server):
    before = _cancelled(_idle(server))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server + "/generate", json=LONG, timeout=httpx.Timeout(5, read=0.5))
    assert _cancelled(_idle(server)) == before + 1


def test_a_full_engine_answers_503_with_retry_after(server):
    before = _cancelled(_idle(server))
    streams = []
    try:
        for _ in range(2):  # the two decode slots
            client = httpx.Client(timeout=30)
            response = client.send(client.build_request(
                "POST", server + "/generate", json=dict(LONG, stream=True)), stream=True)
            streams.append((client, response))
        deadline = time.monotonic() + 20
        while httpx.get(server + "/health").json()["scheduler"]["active"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with httpx.Client(timeout=30) as waiting_client:
            waiting = waiting_client.send(waiting_client.build_request(
                "POST", server + "/generate", json=dict(LONG, stream=True)), stream=True)
            busy = httpx.post(server + "/generate", json=LONG)
            waiting.close()
        assert busy.status_code == 503
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"]["code"] == "engine_overloaded"
    finally:
        for client, response in streams:
            response.close()
            client.close()
    assert _cancelled(_idle(server)) == before + 3  # the two streams and the waiting one


def test_the_client_turns_an_unreachable_engine_into_503():
    async def run():
        async with EngineClient(f"http://127.0.0.1:{free_port()}", connect_timeout=1) as engine:
            with pytest.raises(EngineUnavailable) as info:
                await engine.generate({"prompt": "x"})
            return info.value
    error = asyncio.run(run())
    assert error.status_code == 503 and error.retry_after_s >= 1


def test_the_client_raises_the_engines_errors(server):
    async def run():
        async with EngineClient(server) as engine:
            with pytest.raises(InvalidRequest) as info:
                await engine.generate({"prompt": "x", "top_p": 2})
            with pytest.raises(InvalidRequest):
                async for _ in engine.stream({"prompt": "x", "top_p": 2}):
                    pass
            return info.value
    error = asyncio.run(run())
    assert error.param == "top_p" and error.status_code == 400
