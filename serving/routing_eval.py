"""Routing accuracy on a continual run's holdouts: how often the engine's router picks the
domain a held-out example came from (what a run report carries next to the loss matrix)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.errors import InvalidRequest
from serving.requests import AdapterSpec

# A text example (loss on every token) is routed on its beginning, as a user's prompt would be.
TEXT_PROMPT_CHARS = 300


@dataclass(frozen=True)
class DomainHoldout:
    domain: str
    adapter: AdapterSpec
    holdout: Path


def holdout_prompts(path: Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The prompt part of each holdout example, as request fields: chat → the messages
    before the last assistant turn; prompt/completion → the prompt; text → its start."""
    prompts: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if limit is not None and len(prompts) >= limit:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            if "messages" in row:
                messages = list(row["messages"])
                while messages and messages[-1].get("role") == "assistant":
                    messages.pop()
                if messages:
                    prompts.append({"messages": [{"role": m["role"], "content": m["content"]}
                                                 for m in messages]})
            elif "prompt" in row:
                prompts.append({"prompt": row["prompt"]})
            elif "text" in row and row["text"].strip():
                prompts.append({"prompt": row["text"][:TEXT_PROMPT_CHARS]})
    return prompts


def routing_accuracy(engine: Any, domains: list[DomainHoldout], *,
                     per_domain: int | None = 50) -> dict[str, Any]:
    """Route every holdout prompt among all ``domains``; accuracy overall and per domain,
    the confusion counts, and the time one routing decision took (engine thread)."""
    routes = [{"domain": d.domain, "adapter": d.adapter.model_dump(exclude_unset=True)}
              for d in domains]
    confusion: dict[str, dict[str, int]] = {d.domain: {} for d in domains}
    times: list[float] = []
    skipped = 0
    started = time.perf_counter()
    for domain in domains:
        for prompt in holdout_prompts(domain.holdout, limit=per_domain):
            try:
                routing = engine.route(dict(prompt, routes=routes, max_tokens=1))
            except InvalidRequest:  # longer than the context: not routable as sent
                skipped += 1
                continue
            row = confusion[domain.domain]
            row[routing.domain] = row.get(routing.domain, 0) + 1
            times.append(routing.ms)
    per = {name: {"examples": sum(row.values()),
                  "accuracy": row.get(name, 0) / sum(row.values()) if row else None}
           for name, row in confusion.items()}
    total = sum(p["examples"] for p in per.values())
    correct = sum(confusion[name].get(name, 0) for name in confusion)
    times.sort()
    return {"method": "lowest mean prompt NLL among the domain adapters (LoRA + CRMA)",
            "accuracy": correct / total if total else None, "examples": total,
            "skipped": skipped, "per_domain": per, "confusion": confusion,
            "ms_p50": times[len(times) // 2] if times else None,
            "ms_mean": sum(times) / len(times) if times else None,
            "wall_s": round(time.perf_counter() - started, 3)}
