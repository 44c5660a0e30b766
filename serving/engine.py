"""The engine interface: what the engine server (and anything else) calls to generate.

One engine serves one base model. ``TransformersEngine`` (serving/transformers_engine.py)
is the transformers + peft implementation that serves LoRA + CRMA adapters on CPU (and on a
GPU, without vLLM's kernels). A vLLM backend for LoRA-only adapters would implement the same
protocol over ``vllm.AsyncLLMEngine`` with ``LoRARequest``s (see docs/architecture.md,
"Serving"). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from serving.requests import AdapterSpec, Completion, GenerationRequest, Routing
from serving.stream import GenerationStream

MiB = 1 << 20


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings (each one a ``crma engine`` flag).

    max_batch: generations decoding at once (more wait in a queue of ``max_waiting``; a full
    queue answers 503). max_adapters / max_adapter_bytes: the adapter LRU's bounds.
    max_tokens_cap: the most tokens one request may generate. switch_every: decode steps an
    adapter's group keeps the model while another adapter's requests wait.
    context_length: None uses the model's. batching: several sequences per forward pass.
    compile: compile the single-sequence decode step at start (serving/compiled_decode.py);
    the engine then takes a minute or two longer to start on a small CPU.
    """

    max_batch: int = 4
    max_waiting: int = 32
    max_adapters: int = 8
    max_adapter_bytes: int = 1024 * MiB
    max_tokens_cap: int = 1024
    switch_every: int = 16
    context_length: int | None = None
    batching: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_adapters", "max_adapter_bytes", "max_tokens_cap",
                     "switch_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")


class Engine(Protocol):
    """Generation over one base model with adapters attached on demand."""

    model_id: str

    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Validate, load the adapter(s) if cold, queue; events arrive on the stream.

        Raises InvalidRequest / ContextLengthExceeded (400), AdapterNotFound (404),
        EngineBusy (503) before anything is queued."""
        ...

    def route(self, request: GenerationRequest) -> Routing:
        """The domain ``request.routes`` would pick, without generating."""
        ...

    def load_adapter(self, spec: AdapterSpec) -> dict[str, Any]:
        """Load (or touch) an adapter; its info plus ``"cold": bool``."""
        ...

    def unload_adapter(self, adapter_id: str) -> dict[str, Any]:
        ...

    def adapters(self) -> dict[str, Any]:
        ...

    def health(self) -> dict[str, Any]:
        ...

    def close(self) -> None:
        ...


def generate(engine: Engine, request: GenerationRequest) -> Completion:
    """Submit and wait for the whole completion (raises the engine's error)."""
    return engine.submit(request).result()
