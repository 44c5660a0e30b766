"""Concurrent generations: batched together they give what each gives alone; a cancelled
one frees its slot; a full queue answers busy; two adapters take turns."""

from __future__ import annotations

import threading
import time

import pytest

from serving.errors import EngineBusy
from tests.serving.conftest import spec

PROMPTS = ["the quick brown fox", "one two three", "hello world how are you",
           "def add(a, b):", "question: what is the capital", "seven eight"]


def _request(prompt, adapter=None, **extra):
    body = {"prompt": prompt, "max_tokens": 20, "temperature": 0, **extra}
    if adapter:
        body["adapter"] = spec(adapter)
    return body


def test_concurrent_requests_do_not_corrupt_each_other(make_engine):
    engine = make_engine(max_batch=4)
    jobs = [_request(p, a) for p, a in zip(PROMPTS, [None, None, "a1", "a1", "a2", None])]
    jobs.append(_request(PROMPTS[0], "a1", temperature=1.0, seed=5))
    alone = [engine.submit(job).result().text for job in jobs]
    streams = [engine.submit(job) for job in jobs]  # all queued before the engine gets to them
    together = [s.result().text for s in streams]
    assert together == alone
    assert engine.scheduler.peak_batch >= 2  # prompts of different lengths shared a pass


def test_threads_submitting_at_once(make_engine):
    engine = make_engine(max_batch=3)
    expected = {p: engine.submit(_request(p, "a2")).result().text for p in PROMPTS[:4]}
    results = {}

    def run(prompt):
        results[prompt] = engine.submit(_request(prompt, "a2")).result().text

    threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS[:4] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == expected


def _long(engine, adapter=None, **extra):
    return engine.submit(_request("the quick brown fox", adapter, max_tokens=900,
                                  temperature=1.0, seed=1, **extra))


def _first_delta(stream):
    for event in stream:
        if event.type == "delta":
            return event
        assert event.type == "start"
    raise AssertionError("no delta")


def test_cancel_stops_promptly_and_frees_the_slot(make_engine):
    engine = make_engine(max_batch=1, context_length=1024)
    stream = _long(engine)
    _first_delta(stream)
    stream.cancel()
    done = [e for e in stream][-1]
    assert done.type == "done" and done.finish_reason == "cancelled"
    assert done.usage.completion_tokens < 900
    # The slot is free: a new request runs to its end.
    assert engine.submit(_request("one two three")).result().finish_reason in ("stop", "length")
    assert engine.scheduler.stats()["active"] == 0


def test_a_cancelled_request_that_is_still_queued_never_runs(make_engine):
    engine = make_engine(max_batch=1)
    running = _long(engine)
    _first_delta(running)
    queued = engine.submit(_request("one two three"))
    queued.cancel()
    running.cancel()
    events = list(queued)
    assert events[-1].finish_reason == "cancelled"
    assert not [e for e in events if e.type == "delta"]


def test_a_full_queue_answers_busy_with_retry_after(make_engine):
    engine = make_engine(max_batch=1, max_waiting=1)
    running = _long(engine)
    _first_delta(running)
    waiting = engine.submit(_request("one two three"))
    with pytest.raises(EngineBusy) as info:
        engine.submit(_request("seven eight"))
    assert info.value.status_code == 503 and info.value.retry_after_s >= 1
    assert info.value.headers()["Retry-After"] == str(info.value.retry_after_s)
    running.cancel()
    assert waiting.result().usage.completion_tokens >= 1


def test_two_adapters_take_turns(make_engine):
    """A short request on another adapter finishes while a long one is still going."""
    engine = make_engine(max_batch=4, switch_every=2)
    long = _long(engine, "a1")
    _first_delta(long)
    short = engine.submit(_request("one two three", "a2", max_tokens=4))
    short_done = short.result()
    assert short_done.adapter == "a2"
    assert not long.finished
    long.cancel()
    assert [e for e in long][-1].finish_reason == "cancelled"
    assert engine.weights.switches >= 2


def test_closing_the_engine_fails_waiting_generations(make_engine):
    from serving.errors import EngineUnavailable

    engine = make_engine(max_batch=1)
    running = _long(engine)
    _first_delta(running)
    queued = engine.submit(_request("one two three"))
    started = time.monotonic()
    engine.close()
    assert time.monotonic() - started < 10
    with pytest.raises(EngineUnavailable):
        queued.result()
    with pytest.raises(EngineUnavailable):
        engine.submit(_request("x"))
