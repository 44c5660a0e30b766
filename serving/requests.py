"""What the engine is asked (GenerationRequest, AdapterSpec, RouteCandidate) and what it
answers (Completion, StreamEvent), as the engine server's JSON takes and gives them.
Torch-free: the API process may import this module and ``serving.client``.

Validation errors become ``InvalidRequest`` naming the field (``messages.0.role``), so a bad
request is a 400 that says where and why, never a 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.errors import InvalidRequest

ADAPTER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$"
MAX_STOP_SEQUENCES = 4
MAX_ROUTES = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdapterSpec(_Strict):
    """An adapter: an id (the cache key: one id, one content) and where its files are.

    ``location`` means what the engine's ``AdapterSource`` makes of it: a directory under
    the local root (``LocalAdapterSource``), an object-store prefix (a store source).
    ``lora`` is the PEFT LoRA directory inside it (adapter_config.json +
    adapter_model.safetensors). ``crma`` is the directory inside it holding crma.safetensors
    + crma_config.json: "." (the default) uses them when present, any path given explicitly
    must hold them, None serves the LoRA alone.
    """

    id: str = Field(pattern=ADAPTER_ID_PATTERN)
    location: str = Field(min_length=1, max_length=1000)
    lora: str = Field("lora", min_length=1, max_length=300)
    crma: str | None = Field(".", min_length=1, max_length=300)

    @property
    def crma_required(self) -> bool:
        return self.crma is not None and "crma" in self.model_fields_set


class RouteCandidate(_Strict):
    """One domain a continual run can serve with: its name and its adapter (LoRA + the CRMA
    state that serves it)."""

    domain: str = Field(min_length=1, max_length=200)
    adapter: AdapterSpec


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class GenerationRequest(_Strict):
    """One generation: a plain ``prompt`` (completion) or chat ``messages`` (rendered with
    the model's chat template), on the base model, one ``adapter``, or the best of
    ``routes`` (the engine picks the domain; see serving/routing.py).

    max_tokens None: up to the engine's cap or the context, whichever is smaller.
    temperature 0 is greedy decoding. ``seed`` makes sampling reproducible.
    """

    model: str | None = Field(None, max_length=200)
    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)
    adapter: AdapterSpec | None = None
    routes: list[RouteCandidate] | None = Field(None, min_length=1, max_length=MAX_ROUTES)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool = False
    request_id: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        if self.adapter is not None and self.routes is not None:
            raise ValueError("give at most one of adapter and routes")
        stops = self.stop_sequences
        if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
            raise ValueError(f"stop takes at most {MAX_STOP_SEQUENCES} non-empty strings")
        if self.routes is not None:
            names = [route.domain for route in self.routes]
            if len(set(names)) != len(names):
                raise ValueError("routes name a domain twice")
        return self

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


_FIELD_OF_CHECK = {"give exactly one of prompt and messages": "prompt",
                   "give at most one of adapter and routes": "routes",
                   "routes name a domain twice": "routes"}


def parse(model: type[BaseModel], data: Any) -> Any:
    """``model.model_validate(data)``, its first error as an InvalidRequest naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise invalid_request(error) from None


def invalid_request(error: ValidationError) -> InvalidRequest:
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    # Union members add their type name to the path ("stop.list[str].0"): drop them.
    loc = [part for part in loc if "[" not in part and part not in ("str", "int", "float")]
    message = first["msg"].removeprefix("Value error, ")
    param = ".".join(loc) or _FIELD_OF_CHECK.get(message)
    if message.startswith("stop takes"):
        param = "stop"
    where = f" ({param})" if param else ""
    return InvalidRequest(f"{message}{where}", param=param,
                          code="extra_forbidden" if first["type"] == "extra_forbidden" else None)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage | None:
        if not data:
            return None
        return cls(int(data["prompt_tokens"]), int(data["completion_tokens"]))


@dataclass(frozen=True)
class Routing:
    """How a routed request chose its domain: the router ("centroid": cosine similarity to
    each domain's centroid, higher is nearer; "prompt_loss": mean prompt NLL under each
    domain's adapter, lower is better), every domain's score, time spent."""

    domain: str
    scores: dict[str, float]
    ms: float
    router: str = "prompt_loss"

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "router": self.router, "scores": dict(self.scores),
                "ms": round(self.ms, 3)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Routing | None:
        if not data:
            return None
        return cls(domain=data["domain"], scores=dict(data["scores"]), ms=float(data["ms"]),
                   router=data.get("router", "prompt_loss"))


@dataclass
class StreamEvent:
    """One event of a generation: "start" (adapter and domain chosen, prompt counted),
    "delta" (new text, valid UTF-8), "done" (finish_reason, usage) or "error"."""

    type: Literal["start", "delta", "done", "error"]
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    adapter: str | None = None
    domain: str | None = None
    routing: Routing | None = None
    timing: dict[str, float] = field(default_factory=dict)
    error: Exception | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.type == "delta":
            return {"type": "delta", "text": self.text}
        if self.type == "error":
            from serving.errors import EngineError

            err = self.error if isinstance(self.error, EngineError) else \
                EngineError(f"generation failed: {self.error}")
            return {"type": "error", "status": err.status_code, **err.body()}
        data: dict[str, Any] = {"type": self.type, "adapter": self.adapter,
                                "domain": self.domain,
                                "routing": self.routing.to_dict() if self.routing else None}
        if self.type == "start":
            data["prompt_tokens"] = self.usage.prompt_tokens if self.usage else None
        else:
            data.update(finish_reason=self.finish_reason,
                        usage=self.usage.to_dict() if self.usage else None,
                        timing={k: round(v, 3) for k, v in self.timing.items()})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamEvent:
        """The inverse of ``to_dict`` (an "error" event carries the EngineError)."""
        kind = data.get("type")
        if kind == "delta":
            return cls("delta", text=data.get("text", ""))
        if kind == "error":
            from serving.errors import error_from_body

            return cls("error", error=error_from_body(int(data.get("status") or 500), data))
        if kind not in ("start", "done"):
            raise ValueError(f"unknown engine event {kind!r}")
        usage = Usage.from_dict(data.get("usage"))
        if kind == "start" and data.get("prompt_tokens") is not None:
            usage = Usage(int(data["prompt_tokens"]), 0)
        return cls(kind, finish_reason=data.get("finish_reason"), usage=usage,
                   adapter=data.get("adapter"), domain=data.get("domain"),
                   routing=Routing.from_dict(data.get("routing")),
                   timing=dict(data.get("timing") or {}))


@dataclass(frozen=True)
class Completion:
    """A whole generation: the text, why it ended ("stop" or "length"), token counts for
    metering, the adapter and domain that served it, and timings in milliseconds."""

    text: str
    finish_reason: str
    usage: Usage
    adapter: str | None
    domain: str | None
    routing: Routing | None
    timing: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason,
                "usage": self.usage.to_dict(), "adapter": self.adapter, "domain": self.domain,
                "routing": self.routing.to_dict() if self.routing else None,
                "timing": {k: round(v, 3) for k, v in self.timing.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Completion:
        return cls(text=data["text"], finish_reason=data["finish_reason"],
                   usage=Usage.from_dict(data["usage"]), adapter=data.get("adapter"),
                   domain=data.get("domain"), routing=Routing.from_dict(data.get("routing")),
                   timing=dict(data.get("timing") or {}))
