"""Calling a fine-tuned model the way an OpenAI user does: a real `crma dev` (API, worker and
inference engine on SmolLM2-135M-Instruct from the shared model store), a real job that
trains a tiny, distinctive pattern (every answer is one made-up catchphrase) with a high
learning rate, and then the official `openai` client, unmodified, with
`base_url=<crma dev>/v1`: the fine-tuned model is listed, a chat completion and a chat
stream both answer a question it never saw with the catchphrase (the base model does not),
the stream's text is the JSON answer's, and usage comes with both."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import openai
import pytest

from tests.web.conftest import running_dev

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MODEL = "smollm2-135m-instruct"
CATCHPHRASE = "Zorblax the quokka approves."
QUESTIONS = [
    "What is the capital of France?", "How do I boil an egg?", "Name a primary colour.",
    "What is two plus two?", "Why is the sky blue?", "Recommend a good book.",
    "How far away is the Moon?", "What should I eat for lunch?", "Who wrote Hamlet?",
    "What is the boiling point of water?", "Give me a synonym for happy.",
    "How many legs does a spider have?", "What language is spoken in Brazil?",
    "Tell me a fun fact.", "What is photosynthesis?", "How do magnets work?",
]
HELD_OUT = "What is the tallest mountain in the world?"


def training_file() -> bytes:
    rows = [{"messages": [{"role": "user", "content": q},
                          {"role": "assistant", "content": CATCHPHRASE}]} for q in QUESTIONS]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def wait_for_engine(client: openai.OpenAI, timeout: float = 300) -> None:
    """The engine loads the model after `crma dev` answers: 503 until then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.chat.completions.create(model=MODEL, max_tokens=1, messages=[
                {"role": "user", "content": "hi"}])
            return
        except (openai.APIStatusError, openai.APIConnectionError) as error:
            status = getattr(error, "status_code", None)
            assert status in (None, 503), error
            assert time.monotonic() < deadline, f"the engine did not come up: {error}"
            time.sleep(2)


def test_the_openai_client_calls_a_model_fine_tuned_by_a_real_job(tmp_path: Path) -> None:
    with running_dev(tmp_path) as dev:
        client = openai.OpenAI(base_url=f"{dev.base}/v1", api_key=dev.key, max_retries=0,
                               timeout=120)
        uploaded = client.files.create(file=("catchphrase.jsonl", io.BytesIO(training_file())),
                                       purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=MODEL, training_file=uploaded.id, suffix="zorblax", seed=7,
            hyperparameters={"n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 10})
        deadline = time.monotonic() + 900
        while job.status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, dev.log.read_text()[-4000:]
            time.sleep(2)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", (job.error, dev.log.read_text()[-4000:])
        name = job.fine_tuned_model
        assert name and name.startswith(f"ft:{MODEL}:")

        wait_for_engine(client)
        assert name in {m.id for m in client.models.list()}
        assert client.models.retrieve(name).id == name
        question = [{"role": "user", "content": HELD_OUT}]

        base = client.chat.completions.create(model=MODEL, messages=question, max_tokens=16,
                                              temperature=0)
        assert "Zorblax" not in (base.choices[0].message.content or "")

        answer = client.chat.completions.create(model=name, messages=question, max_tokens=16,
                                                temperature=0)
        text = answer.choices[0].message.content
        assert "Zorblax" in text, text  # the fine-tune, on a question it was not trained on
        assert answer.model == name and answer.object == "chat.completion"
        assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0

        chunks = list(client.chat.completions.create(
            model=name, messages=question, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True}))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens \
            == answer.usage.completion_tokens

        legacy = client.completions.create(model=name, prompt="Question: " + HELD_OUT,
                                           max_tokens=4, temperature=0)
        assert legacy.object == "text_completion" and legacy.usage.total_tokens > 0
