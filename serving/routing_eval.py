"""Routing accuracy on a continual run's holdouts through an engine: how often its router
picks the domain a held-out example came from (the benchmark's figure; a run's report gets
the same measure from the worker, crma_core.routing.bundle_routing_accuracy)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crma_core.routing import CENTROID_METHOD, METHOD, accuracy_report, holdout_prompts
from serving.errors import InvalidRequest
from serving.requests import AdapterSpec

__all__ = ["DomainHoldout", "holdout_prompts", "routing_accuracy"]


@dataclass(frozen=True)
class DomainHoldout:
    domain: str
    adapter: AdapterSpec
    holdout: Path


def routing_accuracy(engine: Any, domains: list[DomainHoldout], *,
                     per_domain: int | None = 50) -> dict[str, Any]:
    """Route every holdout prompt among all ``domains``; accuracy overall and per domain,
    the confusion counts, and the time one routing decision took (engine thread)."""
    routes = [{"domain": d.domain, "adapter": d.adapter.model_dump(exclude_unset=True)}
              for d in domains]
    confusion: dict[str, dict[str, int]] = {d.domain: {} for d in domains}
    times: list[float] = []
    methods: set[str] = set()
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
            methods.add(routing.router)
    router = methods.pop() if len(methods) == 1 else "mixed"
    report = accuracy_report(confusion, times_ms=times, skipped=skipped,
                             method=CENTROID_METHOD if router == "centroid" else METHOD)
    report["router"] = router
    report["wall_s"] = round(time.perf_counter() - started, 3)
    return report
