"""The base models the service offers, with their real sizes (no torch import).

Parameter counts are those of the Hugging Face checkpoints; ``count_parameters`` recomputes
them from the architecture fields so a test can check every figure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogModel:
    """One base model. ``family`` is the transformers architecture family."""

    id: str
    family: str  # "llama" | "mistral" | "gemma2"
    display_name: str
    parameters: int
    context_length: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    qlora: bool  # whether 4-bit NF4 QLoRA is offered (needs CUDA)
    free_tier: bool
    hf_name: str  # the upstream repository, for operators importing it
    intermediate_size: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    head_dim: int = 0
    tie_word_embeddings: bool = False
    # The most tokens one chat or text completion may generate on this model (its
    # fine-tuned models too); a larger max_tokens is a 400.
    max_output_tokens: int = 1024

    def crma_parameters(self, n: int = 4, r: int = 1) -> int:
        """CRMA adapter size on this model: L·(2·d·n·r + n² + 1)."""
        return self.num_layers * (2 * self.hidden_size * n * r + n * n + 1)


CATALOG: dict[str, CatalogModel] = {
    m.id: m
    for m in (
        CatalogModel(
            id="smollm2-135m-instruct", family="llama", display_name="SmolLM2-135M-Instruct",
            parameters=134_515_008, context_length=8192, hidden_size=576, num_layers=30,
            vocab_size=49152, qlora=False, free_tier=True,
            hf_name="HuggingFaceTB/SmolLM2-135M-Instruct", intermediate_size=1536,
            num_attention_heads=9, num_key_value_heads=3, head_dim=64,
            tie_word_embeddings=True,
        ),
        CatalogModel(
            id="tinyllama-1.1b-chat", family="llama", display_name="TinyLlama-1.1B-Chat",
            parameters=1_100_048_384, context_length=2048, hidden_size=2048, num_layers=22,
            vocab_size=32000, qlora=True, free_tier=True,
            hf_name="TinyLlama/TinyLlama-1.1B-Chat-v1.0", intermediate_size=5632,
            num_attention_heads=32, num_key_value_heads=4, head_dim=64,
        ),
        CatalogModel(
            id="mistral-7b-v0.3", family="mistral", display_name="Mistral-7B-v0.3",
            parameters=7_248_023_552, context_length=32768, hidden_size=4096, num_layers=32,
            vocab_size=32768, qlora=True, free_tier=False,
            hf_name="mistralai/Mistral-7B-v0.3", intermediate_size=14336,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        ),
        CatalogModel(
            id="gemma-2-2b-it", family="gemma2", display_name="Gemma-2-2b-it",
            parameters=2_614_341_888, context_length=8192, hidden_size=2304, num_layers=26,
            vocab_size=256000, qlora=True, free_tier=False,
            hf_name="google/gemma-2-2b-it", intermediate_size=9216,
            num_attention_heads=8, num_key_value_heads=4, head_dim=256,
            tie_word_embeddings=True,
        ),
    )
}


def get_model(model_id: str) -> CatalogModel:
    """The catalog entry for ``model_id``; raises ``KeyError`` for an unknown id."""
    try:
        return CATALOG[model_id]
    except KeyError:
        raise KeyError(f"unknown model {model_id!r}; known: {', '.join(CATALOG)}") from None


def count_parameters(model: CatalogModel) -> int:
    """Parameter count from the architecture fields (no weights needed).

    Llama, Mistral and Gemma-2 decoder layers all hold q/k/v/o projections without bias, a
    gated MLP (three matrices) and RMSNorm weights: two per layer, four for Gemma-2's extra
    post-norms.
    """
    d, h = model.hidden_size, model.head_dim
    attention = d * model.num_attention_heads * h * 2 + d * model.num_key_value_heads * h * 2
    mlp = 3 * d * model.intermediate_size
    norms = (4 if model.family == "gemma2" else 2) * d
    embeddings = model.vocab_size * d * (1 if model.tie_word_embeddings else 2)
    return model.num_layers * (attention + mlp + norms) + embeddings + d
