"""One definition of a trained token (app/services/tokens.py, crma_core.data): what the
upload counts, torch-free, is what crma_core's data loader trains on, example by example and
at every max_seq_len (cut examples, dropped examples), for SmolLM2's real tokenizer and chat
template and for the tiny test tokenizer, through the fast piece counter and through the
tokenizers library alike; packing trains the same tokens; a job's estimate follows its
max_seq_len, max_steps and epochs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.domain.job_settings import Hyperparameters, JobSettings
from app.services import token_counter, tokens
from app.services.chat_template import ChatRenderer
from app.services.token_counter import ExampleCounter
from crma_core.catalog import CATALOG
from crma_core.data import chat_spans, load_examples
from tests.smollm2_tokenizer import smollm2_tokenizer_dir

WORDS = ("the a model learns ünïcödé 中文 it's 123 4.5 <|im_end|> \n\n  spaced end. "
         "'ll x\t\ty").split(" ")


def sentence(rng: random.Random, low: int = 1, high: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def examples(fmt: str, count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        if fmt == "chat":
            messages = []
            if rng.random() < 0.3:
                messages.append({"role": "system", "content": sentence(rng)})
            for _ in range(rng.randint(1, 3)):
                messages.append({"role": "user", "content": sentence(rng, 1, 120)})
                messages.append({"role": "assistant",
                                 "content": rng.choice(["", " ", "\n"]) + (sentence(rng).strip()
                                                                           or "ok")})
            rows.append({"messages": messages})
        elif fmt == "prompt_completion":
            rows.append({"prompt": sentence(rng, 0, 80), "completion": sentence(rng).strip() or "y"})
        else:
            rows.append({"text": sentence(rng).strip() or "z"})
    return rows


@pytest.fixture(scope="module", params=["smollm2", "tiny"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "smollm2":
        return smollm2_tokenizer_dir()
    from crma_core.testing import make_tokenizer

    path = tmp_path_factory.mktemp("tiny-tokenizer")
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir: Path):  # noqa: ANN201 - a transformers tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def trained_by_crma_core(rows: list[dict], tokenizer, tmp_path: Path, max_seq_len: int) -> int:  # noqa: ANN001
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, _ = load_examples(path, tokenizer, max_seq_len=max_seq_len)
    return sum(len(example.input_ids) for example in kept)


@pytest.mark.parametrize("fmt", ["chat", "prompt_completion", "text"])
@pytest.mark.parametrize("fast", [True, False], ids=["pieces", "library"])
def test_upload_counts_are_what_crma_core_trains(model_dir: Path, hf_tokenizer, fmt: str,
                                                 fast: bool, tmp_path: Path) -> None:
    counter = ExampleCounter(model_dir)
    assert counter.pieces is not None  # both are byte-level BPE tokenizers
    if not fast:
        counter.pieces = None
    rows = examples(fmt, 150)
    model = SimpleNamespace(id="m", context_length=100_000)
    lengths = tokens.ModelLengths(model, counter)
    for row in rows:
        lengths.add(row, fmt)
    stored = json.loads(json.dumps(lengths.stored()))  # as the files row keeps it
    assert stored["exact"] and stored["rows"] == len(rows)
    for max_seq_len in (32, 40, 64, 128, 100_000):
        assert tokens.epoch_tokens(stored, max_seq_len=max_seq_len) \
            == trained_by_crma_core(rows, hf_tokenizer, tmp_path, max_seq_len), max_seq_len


def test_cut_and_dropped_examples_are_not_counted(hf_tokenizer, model_dir: Path,
                                                  tmp_path: Path) -> None:
    # A long prompt puts the response beyond max_seq_len: crma_core drops the example.
    rows = [{"messages": [{"role": "user", "content": "word " * 200},
                          {"role": "assistant", "content": "short answer"}]},
            {"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello there"}]}]
    counter = ExampleCounter(model_dir)
    stored = tokens.ModelLengths(SimpleNamespace(id="m", context_length=8192), counter)
    for row in rows:
        stored.add(row, "chat")
    kept_both = trained_by_crma_core(rows, hf_tokenizer, tmp_path, 1024)
    kept_one = trained_by_crma_core(rows, hf_tokenizer, tmp_path, 64)
    assert kept_one < 64 < kept_both
    assert tokens.epoch_tokens(stored.stored(), max_seq_len=1024) == kept_both
    assert tokens.epoch_tokens(stored.stored(), max_seq_len=64) == kept_one
    # With train_on_inputs every token trains: nothing is dropped, the long one is cut.
    assert tokens.epoch_tokens(stored.stored(), max_seq_len=64, train_on_inputs=True) \
        == kept_one + 64


def test_packing_trains_the_same_tokens(hf_tokenizer, model_dir: Path, tmp_path: Path) -> None:
    from crma_core.data import batch_trained_tokens, collate, pack_examples

    rows = examples("prompt_completion", 60, seed=3)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, _ = load_examples(path, hf_tokenizer, max_seq_len=512)
    packed = pack_examples(kept, 512)
    assert len(packed) < len(kept)
    pad = hf_tokenizer.pad_token_id
    assert sum(batch_trained_tokens(collate(kept[i:i + 4], pad)) for i in range(0, len(kept), 4)) \
        == sum(batch_trained_tokens(collate(packed[i:i + 2], pad))
               for i in range(0, len(packed), 2)) \
        == sum(len(e.input_ids) for e in kept)


def test_the_chat_renderer_matches_transformers_for_awkward_templates(hf_tokenizer) -> None:
    # Gemma-2's shape: refuses a system role, trims contents; and one that branches on content.
    templates = {
        "refuses_system_and_trims": (
            "{% for m in messages %}{% if m['role'] == 'system' %}"
            "{{ raise_exception('no system role') }}{% endif %}"
            "<turn>{{ m['role'] }}\n{{ m['content'] | trim }}<end>\n{% endfor %}"
            "{% if add_generation_prompt %}<turn>assistant\n{% endif %}"),
        "branches_on_content": (
            "{% for m in messages %}{% if m['content'].startswith('#') %}[H]{% endif %}"
            "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    }
    rng = random.Random(5)
    for name, source in templates.items():
        hf_tokenizer.chat_template = source
        renderer = ChatRenderer(source, {"eos_token": "<|im_end|>"})
        for row in examples("chat", 80, seed=7):
            messages = row["messages"]
            if rng.random() < 0.3:
                messages[0]["content"] = "# " + messages[0]["content"]
            text, spans = chat_spans(hf_tokenizer, messages)
            assert renderer.render(messages) == (text, *spans[0]), name


def test_a_spot_check_that_disagrees_makes_the_count_inexact(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = ExampleCounter(model_dir)
    original = token_counter._PieceCounter.count
    monkeypatch.setattr(token_counter._PieceCounter, "count",
                        lambda self, text, start=None: (original(self, text, start)[0] + 1, None))
    lengths = tokens.ModelLengths(SimpleNamespace(id="m", context_length=8192), counter)
    for row in examples("text", 3):
        lengths.add(row, "text")
    assert not lengths.exact and counter.pieces is None  # the library counts from then on
    hp = Hyperparameters(n_epochs=2, batch_size=1)
    file = SimpleNamespace(token_lengths={"smollm2-135m-instruct": lengths.stored()},
                           token_counts={}, example_count=3)
    estimate = tokens.job_tokens(file, model=CATALOG["smollm2-135m-instruct"],
                                 settings=JobSettings(hyperparameters=hp))
    per_epoch = tokens.epoch_tokens(lengths.stored(), max_seq_len=hp.max_seq_len)
    assert not estimate.exact and estimate.per_epoch >= per_epoch * tokens.PARTIAL_MARGIN


def stored_lengths(lengths: dict[int, int], first: dict[int, int] | None = None) -> dict:
    return {"exact": True, "rows": sum(lengths.values()), "tokens": 0,
            "lengths": sorted(lengths.items()), "first": sorted((first or {}).items())}


def test_a_jobs_estimate_follows_its_max_seq_len_max_steps_and_epochs() -> None:
    model = CATALOG["smollm2-135m-instruct"]
    # 10 rows of 50 tokens, 2 of 900 (one of them with its response beyond 600).
    file = SimpleNamespace(token_counts={"llama": 1}, example_count=12, token_lengths={
        model.id: stored_lengths({50: 10, 900: 2}, {700: 1})})

    def estimate(**hp):  # noqa: ANN202
        settings = JobSettings(hyperparameters=Hyperparameters(**{"batch_size": 1, **hp}))
        return tokens.job_tokens(file, model=model, settings=settings)

    assert estimate(n_epochs=3) == tokens.JobTokens(3 * 2300, 2300, exact=True)
    assert estimate(n_epochs=1, max_seq_len=800).per_epoch == 500 + 2 * 800
    assert estimate(n_epochs=1, max_seq_len=600).per_epoch == 500 + 600  # one dropped
    # max_steps: the longest rows those steps could take, an upper bound.
    assert estimate(n_epochs=2, max_steps=3) == tokens.JobTokens(900 + 900 + 50, 2300,
                                                                 exact=False)
    assert estimate(n_epochs=1, max_steps=100).exact  # beyond the planned steps: no bound
    # Without lengths for the model (not installed at upload): the heuristic, with its margin.
    heuristic = SimpleNamespace(token_counts={"llama": 1000}, example_count=10,
                                token_lengths=None)
    settings = JobSettings(hyperparameters=Hyperparameters(n_epochs=2, batch_size=1))
    assert tokens.job_tokens(heuristic, model=model, settings=settings) == tokens.JobTokens(
        2 * 1000 * tokens.HEURISTIC_MARGIN, 1000 * tokens.HEURISTIC_MARGIN, exact=False)


def test_past_the_exact_budget_lengths_are_extrapolated_and_marked_inexact(
        tmp_path: Path) -> None:
    from crma_core.model_store import SMOLLM2_ID

    store = tmp_path / "store"
    store.mkdir()
    (store / SMOLLM2_ID).symlink_to(smollm2_tokenizer_dir())
    rows = examples("chat", 400, seed=11)
    whole, budgeted = tokens.TokenEstimator(store), tokens.TokenEstimator(store, exact_bytes=4000)
    for row in rows:
        whole.add(row, "chat")
        budgeted.add(row, "chat")
    _, exact_methods, exact_lengths = whole.totals()
    _, methods, lengths = budgeted.totals()
    family = CATALOG[SMOLLM2_ID].family
    assert exact_methods[family] == f"tokenizer:{SMOLLM2_ID}"
    assert methods[family] == f"tokenizer_partial:{SMOLLM2_ID}"
    exact, extrapolated = exact_lengths[SMOLLM2_ID], lengths[SMOLLM2_ID]
    assert exact["exact"] and not extrapolated["exact"]
    assert extrapolated["rows"] == exact["rows"] == len(rows)
    assert extrapolated["tokens"] == pytest.approx(exact["tokens"], rel=0.08)
    # The job's estimate from the extrapolated histogram, with its margin, covers what
    # crma_core will train.
    settings = JobSettings(hyperparameters=Hyperparameters(n_epochs=2, batch_size=4))
    estimate = tokens.job_tokens(SimpleNamespace(token_lengths={SMOLLM2_ID: extrapolated},
                                                 token_counts={}, example_count=len(rows)),
                                 model=CATALOG[SMOLLM2_ID], settings=settings)
    trained = 2 * tokens.epoch_tokens(exact, max_seq_len=settings.hyperparameters.max_seq_len)
    assert not estimate.exact and trained <= estimate.tokens <= 1.25 * trained
