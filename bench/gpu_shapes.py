"""Model shapes for bench/gpu_train.py: the real dimensions (random weights) and toy ones.

Nothing is downloaded: each shape is a transformers config built here from the published
dimensions (TinyLlama-1.1B, Gemma-2-2B, Mistral-7B-v0.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Shape:
    name: str
    family: str  # llama | gemma2 | mistral
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    seq: int
    head_dim: int | None = None
    qlora: bool = False  # also measure QLoRA NF4 (+ checkpointing memory configs)
    # (batch, seq) of the QLoRA + CRMA + gradient-checkpointing memory configurations
    memory_configs: tuple[tuple[int, int], ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def matmul_params(self) -> int:
        """N: parameters that take part in matmuls per token (LM head included, embedding
        lookup not); the MFU numerator is 4N FLOPs per trained token (frozen base)."""
        q = self.heads * self.dim_head
        kv = self.kv_heads * self.dim_head
        attention = self.hidden * q + 2 * self.hidden * kv + q * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp) + self.vocab * self.hidden

    def config(self):
        """A transformers config with these dimensions."""
        from transformers import Gemma2Config, LlamaConfig, MistralConfig

        common = dict(vocab_size=self.vocab, hidden_size=self.hidden,
                      intermediate_size=self.intermediate, num_hidden_layers=self.layers,
                      num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                      max_position_embeddings=max(4096, 2 * self.seq), bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, use_cache=False)
        if self.family == "llama":
            return LlamaConfig(**common, tie_word_embeddings=False, **self.extra)
        if self.family == "mistral":
            return MistralConfig(**common, sliding_window=None, tie_word_embeddings=False,
                                 rope_theta=1e6, **self.extra)
        if self.family == "gemma2":
            return Gemma2Config(**common, head_dim=self.dim_head,
                                query_pre_attn_scalar=self.dim_head,
                                attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                sliding_window=4096, tie_word_embeddings=True,
                                hidden_activation="gelu_pytorch_tanh", **self.extra)
        raise ValueError(f"unknown family {self.family!r}")


SHAPES: dict[str, Shape] = {
    "tinyllama-1.1b": Shape("tinyllama-1.1b", "llama", hidden=2048, intermediate=5632,
                            layers=22, heads=32, kv_heads=4, vocab=32000, batch=8, seq=1024),
    "gemma-2-2b": Shape("gemma-2-2b", "gemma2", hidden=2304, intermediate=9216, layers=26,
                        heads=8, kv_heads=4, head_dim=256, vocab=256000, batch=8, seq=1024),
    "mistral-7b": Shape("mistral-7b", "mistral", hidden=4096, intermediate=14336, layers=32,
                        heads=32, kv_heads=8, vocab=32768, batch=4, seq=1024, qlora=True,
                        memory_configs=((1, 1024), (4, 2048))),
}


def toy_shapes() -> dict[str, Shape]:
    """Same families and variants, tiny dimensions (CPU smoke runs and tests)."""
    tiny = dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, batch=2, seq=32)
    out = {}
    for name, shape in SHAPES.items():
        toy = replace(shape, **tiny, vocab=512 if shape.family != "gemma2" else 1024,
                      head_dim=16 if shape.head_dim else None,
                      memory_configs=((1, 32), (2, 64)) if shape.memory_configs else ())
        out[name] = toy
    return out
