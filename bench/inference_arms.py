"""What bench/inference.py times: one generation per call, through the engine (in process
or over its HTTP server) or through a plain transformers ``generate`` (the baseline), each
returning the same measurements so arms can be compared round by round."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def run_engine(engine: Any, body: dict[str, Any]) -> dict[str, Any]:
    """One request through the in-process engine, timed from before ``submit`` (which
    loads a cold adapter) to the last event; decode rate as the engine measured it."""
    cpu, started = time.process_time(), time.perf_counter()
    first = first_cpu = done = None
    text = []
    for event in engine.submit(body):
        if event.type == "delta":
            if first is None:
                first, first_cpu = time.perf_counter(), time.process_time()
            text.append(event.text)
        elif event.type == "done":
            done = event
    end, end_cpu = time.perf_counter(), time.process_time()
    tokens = done.usage.completion_tokens
    return {"tokens": tokens, "text": "".join(text),
            "decode_tps": done.timing.get("decode_tokens_per_s"),
            "decode_cpu_ms_per_token": _per_token(first_cpu, end_cpu, tokens),
            "ttft_ms": ((first or end) - started) * 1000, "total_ms": (end - started) * 1000,
            "ttft_cpu_ms": ((first_cpu or end_cpu) - cpu) * 1000,
            "cpu_ms_per_token": (end_cpu - cpu) * 1000 / max(tokens, 1),
            "switch_ms": done.timing.get("adapter_switch_ms", 0.0)}


def _per_token(first_cpu: float | None, end_cpu: float, tokens: int) -> float | None:
    """Process CPU time per decoded token after the first: what the decode loop costs,
    barely touched by other processes' load (unlike wall-clock time on a shared machine)."""
    if first_cpu is None or tokens < 2:
        return None
    return (end_cpu - first_cpu) * 1000 / (tokens - 1)


class _Timing(BaseStreamer):
    """Timestamps of generate's tokens (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.cpu: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def end(self) -> None:
        pass


def run_generate(model: Any, tokenizer: Any, messages: list[dict], max_new_tokens: int) -> dict:
    """The baseline: ``model.generate`` (greedy, KV cache) on the chat-templated prompt."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    streamer = _Timing()
    cpu, started = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                             streamer=streamer)
    end, end_cpu = time.perf_counter(), time.process_time()
    tokens = out.shape[1] - ids.shape[1]
    first = streamer.calls[1] if len(streamer.calls) > 1 else end
    first_cpu = streamer.cpu[1] if len(streamer.cpu) > 1 else None
    decoded = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return {"tokens": tokens, "text": decoded,
            "decode_tps": (tokens - 1) / (end - first) if tokens > 1 and end > first else None,
            "decode_cpu_ms_per_token": _per_token(first_cpu, end_cpu, tokens),
            "ttft_ms": (first - started) * 1000, "total_ms": (end - started) * 1000,
            "ttft_cpu_ms": ((first_cpu or end_cpu) - cpu) * 1000,
            "cpu_ms_per_token": (end_cpu - cpu) * 1000 / max(tokens, 1)}


class ForwardMeter:
    """Thread CPU time of each call of a model's forward (the instance attribute shadows the
    class method, so every caller, generate or the engine, goes through it), and of the
    engine's compiled forward where it has one (pass ``engine.compiled`` too). Per-token CPU
    minus the forward's is what a generation loop adds around the model."""

    def __init__(self, *targets: Any):
        self.calls: list[float] = []
        for target in targets:
            if target.forward is not None:
                target.forward = self._timed(target.forward)

    def _timed(self, inner: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.calls.append((time.thread_time() - started) * 1000)
        return forward

    def measure(self, run: Any) -> dict[str, Any]:
        """Run one generation; add the decode steps' forward CPU (the prefill excluded)."""
        self.calls.clear()
        sample = run()
        steps = self.calls[1:]
        sample["forward_cpu_ms"] = sum(steps) / len(steps) if steps else None
        if sample.get("decode_cpu_ms_per_token") is not None and steps:
            sample["outside_forward_cpu_ms"] = (sample["decode_cpu_ms_per_token"]
                                                - sample["forward_cpu_ms"])
        return sample


def run_concurrent(engine: Any, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Submit every body at once; aggregate tokens/s over the wall time of the whole group
    and each stream's own decode rate."""
    cpu, started = time.process_time(), time.perf_counter()
    streams = [engine.submit(body) for body in bodies]
    results = [stream.result() for stream in streams]
    wall = time.perf_counter() - started
    tokens = sum(r.usage.completion_tokens for r in results)
    return {"streams": len(bodies), "tokens": tokens, "wall_s": wall,
            "aggregate_tps": tokens / wall,
            "per_stream_decode_tps": median([r.timing.get("decode_tokens_per_s")
                                             for r in results]),
            "per_stream_total_tps": median([r.usage.completion_tokens
                                            / (r.timing["total_ms"] / 1000) for r in results]),
            "cpu_ms_per_token": (time.process_time() - cpu) * 1000 / max(tokens, 1)}


def run_http(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    """One request through the engine's HTTP server (JSON, or SSE to the first delta)."""
    started = time.perf_counter()
    if not body.get("stream"):
        response = client.post("/generate", json=body)
        response.raise_for_status()
        return {"total_ms": (time.perf_counter() - started) * 1000,
                "tokens": response.json()["usage"]["completion_tokens"]}
    first = None
    with client.stream("POST", "/generate", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:") and first is None and \
                    json.loads(line[5:])["type"] == "delta":
                first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft_ms": ((first or end) - started) * 1000, "total_ms": (end - started) * 1000}


def alternate(arms: dict[str, Any], rounds: int) -> dict[str, list[dict]]:
    """Run every arm once per round, forward then backward on alternate rounds (A B B A),
    so slow drift of the machine's load hits every arm alike."""
    names = list(arms)
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            samples[name].append(arms[name]())
    return samples


def summarize(samples: list[dict], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: median([s.get(key) for s in samples]) for key in keys} | {"runs": len(samples)}


def paired_ratio(numerator: list[dict], denominator: list[dict], key: str) -> float | None:
    """Median over rounds of numerator/denominator measured in the same round."""
    ratios = [a[key] / b[key] for a, b in zip(numerator, denominator, strict=True)
              if a.get(key) and b.get(key)]
    return round(statistics.median(ratios), 4) if ratios else None
