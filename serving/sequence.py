"""One generation inside the engine: its prompt, its adapter, the tokens so far, and how
each new token turns into stream events (text delta, then the end with usage)."""

from __future__ import annotations

import time
from typing import Any

from serving.adapters import LoadedAdapter
from serving.requests import GenerationRequest, Routing, StreamEvent, Usage
from serving.sampling import Sampler
from serving.stream import GenerationStream
from serving.text import TextStream


class Sequence:
    def __init__(self, *, request: GenerationRequest, prompt_ids: list[int], max_new_tokens: int,
                 adapter: LoadedAdapter | None,
                 candidates: list[tuple[str, LoadedAdapter]] | None, tokenizer: Any,
                 eos_ids: frozenset[int], stream: GenerationStream, device: Any):
        self.request = request
        self.prompt_ids = prompt_ids
        self.max_new_tokens = max_new_tokens
        self.adapter = adapter
        self.candidates = candidates  # routed requests: the engine picks one before prefill
        self.domain: str | None = None
        self.routing: Routing | None = None
        self.eos_ids = eos_ids
        self.stream = stream
        self.sampler = Sampler(temperature=request.temperature, top_p=request.top_p,
                               seed=request.seed, device=device)
        self.text = TextStream(tokenizer, request.stop_sequences)
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.times: dict[str, float] = {"submitted": time.perf_counter()}
        self.switch_ms = 0.0

    @property
    def adapter_key(self) -> str | None:
        return self.adapter.id if self.adapter is not None else None

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    @property
    def cancelled(self) -> bool:
        return self.stream.cancelled

    def mark(self, name: str) -> None:
        self.times[name] = time.perf_counter()

    def start(self) -> None:
        """The "start" event: adapter and domain chosen, prompt tokens counted."""
        self.stream.put(StreamEvent("start", adapter=self.adapter_key, domain=self.domain,
                                    routing=self.routing,
                                    usage=Usage(len(self.prompt_ids), 0)))

    def accept(self, token_id: int) -> str | None:
        """Take the sampled token; the finish reason once the sequence is complete (the
        caller then calls ``finish``)."""
        if not self.generated:
            self.mark("first_token")
        self.generated.append(token_id)
        if token_id in self.eos_ids:
            return "stop"
        delta = self.text.push(token_id)
        if delta:
            self.stream.put(StreamEvent("delta", text=delta))
        if self.text.stopped:
            return "stop"
        if len(self.generated) >= self.max_new_tokens:
            return "length"
        return None

    def finish(self, reason: str) -> None:
        self.finish_reason = reason
        if reason != "cancelled":
            rest = self.text.close()
            if rest:
                self.stream.put(StreamEvent("delta", text=rest))
        self.mark("done")
        self.stream.put(StreamEvent("done", finish_reason=reason, adapter=self.adapter_key,
                                    domain=self.domain, routing=self.routing,
                                    usage=Usage(len(self.prompt_ids), len(self.generated)),
                                    timing=self.timing()))

    def fail(self, error: Exception) -> None:
        self.finish_reason = "error"
        self.stream.put(StreamEvent("error", error=error))

    def timing(self) -> dict[str, float]:
        """Milliseconds: queue (submit to prefill), time to first token, total, decode rate."""
        t = self.times
        ms = {"total_ms": (t.get("done", time.perf_counter()) - t["submitted"]) * 1000}
        if "prefill" in t:
            ms["queue_ms"] = (t["prefill"] - t["submitted"]) * 1000
        if "first_token" in t:
            ms["ttft_ms"] = (t["first_token"] - t["submitted"]) * 1000
            if "done" in t and len(self.generated) > 1:
                decode = t["done"] - t["first_token"]
                rate = (len(self.generated) - 1) / decode if decode > 0 else 0.0
                ms["decode_tokens_per_s"] = rate
        if self.switch_ms:
            ms["adapter_switch_ms"] = self.switch_ms
        if self.routing is not None:
            ms["routing_ms"] = self.routing.ms
        return ms
