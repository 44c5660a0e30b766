"""OpenAI's chat-completions and (legacy) completions shapes, for calling a fine-tuned model.

Requests take OpenAI's fields. The ones this service cannot honour are accepted only at
their neutral value (``n`` = 1, penalties 0, no logprobs, no tools, text output): anything
else is a 400 naming the field, never silently ignored. ``domain`` is ours: the domain of
a continual run to answer with (the official client sends it through ``extra_body``).
Responses are OpenAI's objects plus ``domain`` (the continual-run domain that answered, or
null), which the official client keeps as an extra attribute."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from app.schemas.common import RequestModel

MAX_STOP_SEQUENCES = 4
DOMAIN_DESCRIPTION = (
    "Ours: for a continual run's model, the domain whose adapter answers (see its run's "
    "domains). Omitted: the service routes the request to the domain whose adapter gives "
    "the prompt the lowest loss, and says which in the response's `domain`.")


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, max_length=64)


class StreamOptions(RequestModel):
    include_usage: bool = Field(
        False, description="Send a last chunk (empty `choices`) with the request's `usage`.")


class ResponseFormat(RequestModel):
    type: Literal["text"] = Field(description="Only plain text is offered.")


class SamplingIn(RequestModel):
    """The fields both endpoints share."""

    model: str = Field(min_length=1, max_length=300, description=(
        "A succeeded job's `fine_tuned_model`, a checkpoint's `fine_tuned_model_checkpoint`, "
        "a continual run's `fine_tuned_model`, or a base model id (`GET /v1/models`)."))
    max_tokens: int | None = Field(None, ge=1, description=(
        "Most tokens to generate; at most the model's `max_output_tokens`. Default: as many "
        "as fit, up to that bound."))
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False,
                                      description="0 is greedy decoding. Default 1.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False,
                                description="Nucleus sampling mass. Default 1.")
    stop: str | list[str] | None = Field(None, description=(
        f"Up to {MAX_STOP_SEQUENCES} sequences; the text ends before the first one."))
    seed: int | None = Field(None, ge=-(2**63), lt=2**64,
                             description="Makes sampling reproducible on this engine.")
    n: int | None = Field(None, ge=1, le=1, description="Only 1 choice is generated.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="Accepted; not used.")
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0,
                                            description="Only 0 (no penalty) is offered.")
    presence_penalty: float | None = Field(None, ge=0.0, le=0.0,
                                           description="Only 0 (no penalty) is offered.")
    logit_bias: dict[str, float] | None = Field(None, max_length=0,
                                                description="Not offered (empty only).")
    domain: str | None = Field(None, min_length=1, max_length=100,
                               description=DOMAIN_DESCRIPTION)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
            raise ValueError(f"stop takes at most {MAX_STOP_SEQUENCES} non-empty strings")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: StreamOptions | None,
                                    info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("is only allowed with stream: true")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionCreate(SamplingIn):
    messages: list[ChatMessage] = Field(min_length=1, max_length=512, description=(
        "The conversation, rendered with the base model's chat template."))
    max_completion_tokens: int | None = Field(None, ge=1, description=(
        "OpenAI's newer name for max_tokens (give one of them)."))
    logprobs: bool | None = Field(None, description="Not offered (false only).")
    top_logprobs: int | None = Field(None, ge=0, le=0, description="Not offered.")
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=0,
                                               description="Not offered (empty only).")
    tool_choice: Literal["none"] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = Field(None, description="Completions are never stored (false only).")
    metadata: dict[str, str] | None = Field(None, description="Accepted; not used.")

    @field_validator("logprobs", "store")
    @classmethod
    def _false_only(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("is not offered by this service (false only)")
        return value

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_length_field(cls, value: int | None, info: ValidationInfo) -> int | None:
        given = info.data.get("max_tokens")
        if value is not None and given is not None and value != given:
            raise ValueError("give one of max_tokens and max_completion_tokens")
        return value

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    @property
    def token_limit_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None \
            else "max_tokens"


class CompletionCreate(SamplingIn):
    prompt: str | list[str] = Field(description="One prompt (a list holding one string is "
                                    "accepted too).")
    echo: bool | None = Field(None, description="Not offered (false only).")
    suffix: str | None = Field(None, max_length=0, description="Not offered.")
    best_of: int | None = Field(None, ge=1, le=1, description="Only 1.")
    logprobs: int | None = Field(None, ge=0, le=0, description="Not offered.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("give one prompt (a string, or a list of exactly one string)")
        if not (value if isinstance(value, str) else value[0]):
            raise ValueError("must not be empty")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("is not offered by this service (false only)")
        return value

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def token_limit_field(self) -> str:
        return "max_tokens"


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionOut(BaseModel):
    id: str = Field(examples=["chatcmpl-abc123"])
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut
    system_fingerprint: None = None
    domain: str | None = Field(None, description="The continual-run domain that answered "
                               "(also in the `x-crma-domain` header); null otherwise.")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionOut(BaseModel):
    id: str = Field(examples=["cmpl-abc123"])
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut
    system_fingerprint: None = None
    domain: str | None = Field(None, description="The continual-run domain that answered.")


STREAM_DESCRIPTION = (
    "With `stream: true`: server-sent events, one `data: {chunk}` per event (OpenAI's "
    "`chat.completion.chunk` / `text_completion` chunks; with "
    "`stream_options.include_usage` a last chunk with empty `choices` and the `usage`), "
    "ending in `data: [DONE]`. An error after the stream started is one `data: {\"error\": "
    "{...}}` event.")
