"""Generation behaviour: streaming = non-streaming, seeds, sampling settings, stop
sequences, max_tokens, the chat template, usage counts, the context limit, bad input."""

from __future__ import annotations

import pytest

from serving.errors import ContextLengthExceeded, InvalidRequest
from tests.serving.conftest import spec

PROMPT = "the quick brown fox"


def _events(engine, request):
    return list(engine.submit(request))


def test_streamed_deltas_add_up_to_the_completion(engine):
    request = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0.9, "seed": 11,
               "adapter": spec("a1")}
    events = _events(engine, request)
    assert [e.type for e in events][0] == "start" and events[-1].type == "done"
    assert all(e.type in ("start", "delta", "done") for e in events)
    streamed = "".join(e.text for e in events if e.type == "delta")
    assert streamed == engine.submit(request).result().text
    done = events[-1]
    assert done.adapter == "a1" and done.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens == len(engine.tokenizer(PROMPT).input_ids)
    assert 1 <= done.usage.completion_tokens <= 24
    assert done.timing["ttft_ms"] >= 0 and done.timing["total_ms"] >= done.timing["ttft_ms"]


def test_a_whole_decode_of_the_tokens_equals_the_streamed_text(engine):
    """Deltas decode incrementally (valid UTF-8 at every chunk) yet lose nothing."""
    from serving.text import TextStream

    ids = engine.tokenizer("héllo wörld, 日本語 🎉 done").input_ids
    text = TextStream(engine.tokenizer, [])
    chunks = [text.push(i) for i in ids] + [text.close()]
    assert "".join(chunks) == engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert all(c.encode("utf-8").decode("utf-8") == c for c in chunks)
    assert "\ufffd" not in "".join(chunks)


def test_a_seed_reproduces_sampling_and_another_seed_differs(engine):
    base = {"prompt": PROMPT, "max_tokens": 24, "temperature": 1.5, "top_p": 0.95}
    first = engine.submit(dict(base, seed=7)).result().text
    assert engine.submit(dict(base, seed=7)).result().text == first
    others = {engine.submit(dict(base, seed=s)).result().text for s in (8, 9, 10)}
    assert others - {first}


def test_temperature_zero_is_greedy_and_top_p_tiny_is_greedy_too(engine):
    greedy = engine.submit({"prompt": PROMPT, "max_tokens": 16, "temperature": 0}).result()
    nucleus = engine.submit({"prompt": PROMPT, "max_tokens": 16, "temperature": 1.0,
                             "top_p": 1e-9, "seed": 3}).result()
    assert nucleus.text == greedy.text


def test_max_tokens_ends_with_length(engine):
    result = engine.submit({"prompt": PROMPT, "max_tokens": 5, "temperature": 0,
                            "adapter": spec("a2")}).result()
    if result.finish_reason == "length":
        assert result.usage.completion_tokens == 5
    else:  # the random model may pick its eos first
        assert result.usage.completion_tokens < 5


def test_stop_sequences_cut_the_text_and_hold_back_partial_matches(engine):
    free = engine.submit({"prompt": PROMPT, "max_tokens": 24, "temperature": 0}).result().text
    assert len(free) > 6
    stop = free[3:6]
    result = engine.submit({"prompt": PROMPT, "max_tokens": 24, "temperature": 0,
                            "stop": [stop, "never-appears"], "stream": True})
    events = list(result)
    text = "".join(e.text for e in events if e.type == "delta")
    assert text == free[:free.index(stop)]
    assert events[-1].finish_reason == "stop"


def test_stop_holdback_in_isolation(engine):
    from serving.text import TextStream

    class Chars:  # a tokenizer whose tokens are characters
        backend_tokenizer = None

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    text = TextStream(Chars(), ["END"])
    out = [text.push(ord(c)) for c in "abcENxEND tail"]
    assert "".join(out) == "abcENx" and text.stopped
    assert out[3:5] == ["", ""]  # "E", "EN" held back while they could start "END"
    assert text.close() == ""


def test_chat_messages_use_the_chat_template(engine):
    messages = [{"role": "developer", "content": "answer briefly"},
                {"role": "user", "content": [{"type": "text", "text": "what is 2 plus 2?"}]}]
    rendered = engine.tokenizer.apply_chat_template(
        [{"role": "system", "content": "answer briefly"},
         {"role": "user", "content": "what is 2 plus 2?"}], add_generation_prompt=True,
        tokenize=False)
    chat = engine.submit({"messages": messages, "max_tokens": 8, "temperature": 0}).result()
    plain = engine.submit({"prompt": rendered, "max_tokens": 8, "temperature": 0}).result()
    assert chat.usage.prompt_tokens == len(engine.tokenizer(rendered,
                                                            add_special_tokens=False).input_ids)
    assert chat.text == plain.text


def test_a_prompt_longer_than_the_context_names_the_limit(make_engine):
    engine = make_engine(context_length=64)
    with pytest.raises(ContextLengthExceeded) as info:
        engine.submit({"prompt": "one two three " * 40})
    assert info.value.status_code == 400 and info.value.param == "prompt"
    assert "maximum context length is 64 tokens" in info.value.message
    with pytest.raises(ContextLengthExceeded) as info:
        engine.submit({"prompt": PROMPT, "max_tokens": 63})
    assert info.value.param == "max_tokens" and "64 tokens" in info.value.message
    fitted = engine.submit({"prompt": PROMPT, "temperature": 0}).result()  # no max_tokens
    assert fitted.usage.total_tokens <= 64


@pytest.mark.parametrize("request_body,param", [
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "hi"}]}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "adapter": {"id": "../etc", "location": "a1"}}, "adapter.id"),
    ({"prompt": "x", "adapter": {"id": "a1", "location": "/etc"}}, "adapter.location"),
    ({"prompt": "x", "adapter": {"id": "a1", "location": "../a1"}}, "adapter.location"),
    ({"prompt": "x", "model": "another-model"}, "model"),
    ({"prompt": "x", "routes": [{"domain": "d", "adapter": {"id": "a1", "location": "a1"}}] * 2},
     "routes"),
])
def test_bad_requests_name_the_field(engine, request_body, param):
    with pytest.raises(InvalidRequest) as info:
        engine.submit(request_body)
    assert info.value.status_code == 400
    assert info.value.param == param, info.value.message
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_an_adapter_missing_from_its_location_is_a_404(engine):
    from serving.errors import AdapterNotFound

    for bad in (spec("nowhere"), spec("a1", lora="missing"), spec("lora-only", crma="crma")):
        with pytest.raises(AdapterNotFound) as info:
            engine.submit({"prompt": PROMPT, "adapter": bad})
        assert info.value.status_code == 404 and info.value.code == "adapter_not_found"
    with pytest.raises(AdapterNotFound):
        engine.unload_adapter("never-loaded")
