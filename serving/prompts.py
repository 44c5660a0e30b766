"""Requests to prompt token ids (the model's chat template for messages), and the context
window: a prompt that does not fit is a 400 that names the limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crma_core.routing import prompt_ids
from serving.errors import ContextLengthExceeded, InvalidRequest
from serving.requests import GenerationRequest


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    max_new_tokens: int
    field: str  # "messages" or "prompt": what a context error names


def render_ids(tokenizer: Any, request: GenerationRequest) -> tuple[list[int], str]:
    """(prompt token ids, the request field they came from)."""
    if request.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequest("this model has no chat template; send a plain prompt instead",
                                 param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        return prompt_ids(tokenizer, messages=messages), "messages"
    ids = prompt_ids(tokenizer, prompt=request.prompt)
    if not ids:
        raise InvalidRequest("prompt is empty", param="prompt")
    return ids, "prompt"


def build_prompt(tokenizer: Any, request: GenerationRequest, *, context_length: int,
                 max_tokens_cap: int) -> Prompt:
    """Token ids and the number of tokens to generate at most, checked against the context.

    max_tokens None means as many as fit, up to the engine's cap; an explicit max_tokens
    that does not fit next to the prompt is refused (OpenAI does the same).
    """
    ids, field = render_ids(tokenizer, request)
    count = len(ids)
    if count >= context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens; the {field} "
            f"has {count} tokens (leave room for at least one generated token)", param=field)
    room = context_length - count
    if request.max_tokens is None:
        return Prompt(ids, min(room, max_tokens_cap), field)
    if request.max_tokens > max_tokens_cap:
        raise InvalidRequest(f"max_tokens is at most {max_tokens_cap} on this engine, got "
                             f"{request.max_tokens}", param="max_tokens")
    if request.max_tokens > room:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens; you requested "
            f"{count + request.max_tokens} tokens ({count} in the {field}, "
            f"{request.max_tokens} for the completion)", param="max_tokens")
    return Prompt(ids, request.max_tokens, field)


def eos_ids(tokenizer: Any, generation_config: Any) -> frozenset[int]:
    """Every token id that ends a generation (the tokenizer's and the model's eos)."""
    ids = set()
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
