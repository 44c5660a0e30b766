"""Tiny random-weight models for tests and integration runs (built offline, in seconds).

``make_tiny_model_dir`` writes a Hugging Face directory (safetensors weights, config, a
byte-level BPE tokenizer with a ChatML chat template) that Recipe, the loader and the model
store accept like a real base model.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "gemma2")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# A little English so BPE learns a few merges; byte fallback covers any other text.
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "question: what is the capital of france? answer: paris",
    "user assistant system hello world how are you today",
    "def add(a, b): return a + b",
    "one two three four five six seven eight nine ten",
] * 4


def make_tokenizer(vocab_size: int = 384):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (eos ``<|im_end|>``, pad ``<pad>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
        bos_token=None, unk_token=None, chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def tiny_config(family: str = "llama", *, vocab_size: int, num_layers: int = 2,
                hidden_size: int = 64, pad_token_id: int | None = None,
                eos_token_id: int | None = None):
    """A transformers config of the given family with tiny shapes (4 heads, 2 KV heads)."""
    from transformers import Gemma2Config, LlamaConfig, MistralConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        bos_token_id=None,
    )
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
    if family == "gemma2":
        head_dim = hidden_size // 4
        return Gemma2Config(**common, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                            sliding_window=64, tie_word_embeddings=True)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def make_tiny_model(family: str = "llama", *, seed: int = 0, num_layers: int = 2,
                    hidden_size: int = 64, vocab_size: int = 384):
    """An in-memory random-weight causal LM (float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, vocab_size=vocab_size, num_layers=num_layers,
                         hidden_size=hidden_size)
    if family == "gemma2":
        config._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def make_tiny_model_dir(path: Path, family: str = "llama", *, seed: int = 0,
                        num_layers: int = 2, hidden_size: int = 64) -> Path:
    """Write a random-weight tiny model + tokenizer as a Hugging Face directory at ``path``.

    Hidden 64, ``num_layers`` layers, 4 heads; byte-level BPE tokenizer (any text encodes)
    with a ChatML template, eos ``<|im_end|>`` and pad ``<pad>``. Returns ``path``.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    config = tiny_config(
        family, vocab_size=len(tokenizer), num_layers=num_layers, hidden_size=hidden_size,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def arithmetic_chat_rows(count: int, *, offset: int = 0) -> list[dict]:
    """Small learnable chat examples ("what is i plus i?" → "i plus i is 2i.")."""
    return [
        {"messages": [
            {"role": "system", "content": "answer briefly"},
            {"role": "user", "content": f"what is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        ]}
        for i in range(offset, offset + count)
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    """Write one JSON object per line; returns ``path``."""
    import json

    path = Path(path)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


# Three small, distinct text domains for continual-learning tests.
TEXT_DOMAINS = {
    "alpha": "the quick brown fox jumps over the lazy dog number {i}",
    "beta": "def add(a, b): return a + b  # case {i}",
    "gamma": "question: what is {i} plus {i}? answer: {j}",
}


def write_text_domains(root: Path, templates: dict[str, str] = TEXT_DOMAINS, *,
                       train: int = 12, holdout: int = 4) -> list:
    """One ``crma_core.continual_state.DomainSpec`` per template ({"text"} rows; ``{i}`` is
    the row number, ``{j}`` twice it; holdout rows are numbered from 100)."""
    from crma_core.continual_state import DomainSpec

    def rows(template: str, start: int, count: int) -> list[dict]:
        return [{"text": template.format(i=i, j=2 * i)} for i in range(start, start + count)]

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return [DomainSpec(name=name,
                       train_file=write_jsonl(root / f"{name}-train.jsonl", rows(t, 0, train)),
                       holdout_file=write_jsonl(root / f"{name}-holdout.jsonl",
                                                rows(t, 100, holdout)))
            for name, t in templates.items()]
