"""Routing a prompt among a continual run's domain adapters: the domain whose adapter (its
LoRA and the CRMA state that serves it) gives the prompt the lowest mean next-token negative
log-likelihood.

The scoring primitive (``routing_window`` + ``mean_prompt_nll``) is shared by the inference
engine, which scores every candidate in one batched pass (serving/routing.py), and by the
routing accuracy a run's report carries (``bundle_routing_accuracy``: each holdout prompt
scored under every domain's served pair, at the end of each stage, in the worker). Both
read a holdout example's prompt the same way (``holdout_prompts``) and render it with the
model's chat template (``prompt_ids``), so the report measures the router the engine runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# Longer prompts are scored on their last tokens: the cost stays bounded and the tail is
# where a chat prompt's own words are (the template's system text comes first).
MAX_ROUTE_TOKENS = 256
# A text example (loss on every token) is routed on its beginning, as a user's prompt would be.
TEXT_PROMPT_CHARS = 300
METHOD = "lowest mean prompt NLL among the domain adapters (LoRA + CRMA)"
# Prompts per domain the report routes: fewer as domains grow (each is scored under every
# domain), at least MIN_PER_DOMAIN.
MAX_PER_DOMAIN, MIN_PER_DOMAIN, SCORING_BUDGET = 20, 5, 400


def routing_window(ids: Sequence[int]) -> list[int]:
    """The prompt tokens a routing decision reads (the last MAX_ROUTE_TOKENS)."""
    return list(ids[-MAX_ROUTE_TOKENS:])


def mean_prompt_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL per row: logits (B, T, V) of ids (B, T) -> (B,), float32."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:],
                           reduction="none").mean(dim=1)


def holdout_prompts(path: Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The prompt part of each holdout example, as request fields: chat -> the messages
    before the last assistant turn; prompt/completion -> the prompt; text -> its start."""
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


def prompt_ids(tokenizer: Any, *, messages: Sequence[Mapping[str, str]] | None = None,
               prompt: str | None = None) -> list[int]:
    """Token ids of a chat (the model's chat template, with the assistant's header) or of a
    plain prompt, as the engine renders a request."""
    if messages is not None:
        # OpenAI's "developer" messages are what chat templates call "system".
        rendered = [{"role": "system" if m["role"] == "developer" else m["role"],
                     "content": m["content"]} for m in messages]
        text = tokenizer.apply_chat_template(rendered, add_generation_prompt=True,
                                             tokenize=False)
        # The template already wrote every special token the model expects.
        return tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer(prompt, add_special_tokens=True).input_ids


def accuracy_report(confusion: Mapping[str, Mapping[str, int]], *,
                    times_ms: Sequence[float] = (), skipped: int = 0) -> dict[str, Any]:
    """Accuracy overall and per domain from ``confusion[true][chosen]`` counts."""
    per = {name: {"examples": sum(row.values()),
                  "accuracy": row.get(name, 0) / sum(row.values()) if row else None}
           for name, row in confusion.items()}
    total = sum(p["examples"] for p in per.values())
    correct = sum(confusion[name].get(name, 0) for name in confusion)
    times = sorted(times_ms)
    return {"method": METHOD, "accuracy": correct / total if total else None,
            "examples": total, "skipped": skipped, "per_domain": per,
            "confusion": {name: dict(row) for name, row in confusion.items()},
            "ms_p50": times[len(times) // 2] if times else None,
            "ms_mean": sum(times) / len(times) if times else None}


def prompts_per_domain(domains: int) -> int:
    return max(MIN_PER_DOMAIN, min(MAX_PER_DOMAIN, SCORING_BUDGET // max(1, domains * domains)))


# no_grad, not inference_mode: the CRMA handle's weights are loaded again per domain.
@torch.no_grad()
def bundle_routing_accuracy(model_dir: Path, bundle_dir: Path, holdouts: Mapping[str, Path], *,
                            per_domain: int | None = None, device: str = "cpu",
                            context_length: int | None = None) -> dict[str, Any] | None:
    """Route the first prompts of each domain's holdout among the domains of a continual
    run's bundle (``crma_core.continual_state.export_bundle``); the report of
    ``accuracy_report``. None when there is nothing to choose between (one domain, or one
    adapter for every domain as in naive mode).

    ``holdouts``: domain name -> holdout file. Each prompt is scored under every domain's
    served pair (LoRA + the CRMA state the manifest names), one forward pass each; prompts
    that do not fit ``context_length`` are skipped, as the engine would refuse them.
    """
    import time

    from peft import PeftModel

    from crma_core.io import load_crma, load_crma_into
    from crma_core.recipe import load_base_model, load_tokenizer

    bundle_dir, model_dir = Path(bundle_dir), Path(model_dir)
    entries = json.loads((bundle_dir / "manifest.json").read_text())["domains"]
    if len(entries) < 2 or len({(e["lora"], e.get("crma")) for e in entries}) < 2:
        return None
    per_domain = per_domain or prompts_per_domain(len(entries))
    tokenizer = load_tokenizer(model_dir)
    model = PeftModel.from_pretrained(load_base_model(model_dir, device=device),
                                      str(bundle_dir / entries[0]["lora"]), adapter_name="d0",
                                      is_trainable=False)
    for index, entry in enumerate(entries[1:], start=1):
        model.load_adapter(str(bundle_dir / entry["lora"]), adapter_name=f"d{index}",
                           is_trainable=False)
    crma_dirs = [bundle_dir / e["crma"] if e.get("crma") else None for e in entries]
    first = next((d for d in crma_dirs if d is not None), None)
    crma = load_crma(model, first) if first is not None else None
    model.eval()
    limit = context_length or getattr(model.config, "max_position_embeddings", None)
    prompts: dict[str, list[list[int]]] = {}
    skipped = 0
    for name, path in holdouts.items():
        prompts[name] = []
        for fields in holdout_prompts(Path(path), limit=per_domain):
            ids = prompt_ids(tokenizer, **fields)
            if len(ids) < 2 or (limit and len(ids) >= limit):
                skipped += 1
                continue
            prompts[name].append(routing_window(ids))
    scores: dict[tuple[str, int], list[float]] = {}
    started = time.perf_counter()
    for index, crma_dir in enumerate(crma_dirs):
        model.set_adapter(f"d{index}")
        if crma is not None:
            crma.enabled = crma_dir is not None
            if crma_dir is not None:
                load_crma_into(crma, crma_dir)
        for name, rows in prompts.items():
            for j, window in enumerate(rows):
                ids = torch.tensor([window], device=model.device)
                loss = mean_prompt_nll(model(input_ids=ids, use_cache=False).logits, ids)
                scores.setdefault((name, j), []).append(float(loss[0]))
    names = [e["name"] for e in entries]
    confusion: dict[str, dict[str, int]] = {name: {} for name in holdouts}
    for (name, _), row in scores.items():
        chosen = names[min(range(len(row)), key=row.__getitem__)]
        confusion[name][chosen] = confusion[name].get(chosen, 0) + 1
    decisions = max(1, len(scores))
    per_decision_ms = (time.perf_counter() - started) * 1000 / decisions
    report = accuracy_report(confusion, skipped=skipped)
    report.update(prompts_per_domain=per_domain, scoring_ms_per_prompt=round(per_decision_ms, 3))
    return report


def state_routing_accuracy(model_dir: Path, state_dir: Path, bundle_dir: Path, *,
                           device: str = "cpu") -> dict[str, Any] | None:
    """``bundle_routing_accuracy`` of a stage's bundle on the holdouts its state stores."""
    from crma_core.continual_state import holdout_path, read_state

    state = read_state(Path(state_dir))
    holdouts = {entry["name"]: holdout_path(Path(state_dir), entry)
                for entry in state["domains"]}
    return bundle_routing_accuracy(model_dir, bundle_dir, holdouts, device=device)
