"""Routing a prompt among a continual run's domain adapters.

Two routers, one per kind of bundle:

- **centroid** (every stage since the router was added): each domain's training prompts,
  read by the untrained base model, give a centroid (every layer's mean hidden state, unit
  length per layer, concatenated; ``CENTROID_FILE`` in the domain's LoRA directory). A
  prompt goes to the domain whose centroid is nearest (cosine, after subtracting the
  candidates' mean centroid). One base-model pass per prompt whatever the number of
  domains, and it does not depend on what the adapters learned: a chat domain trained on
  its answers only (the default) teaches its LoRA nothing about its prompts, and there the
  loss router guesses (0.5 on two SmolLM2 chat domains, where the centroid router scored 1.0).
- **prompt loss** (bundles without centroids): the domain whose adapter (its LoRA and the
  CRMA state that serves it) gives the prompt the lowest mean next-token negative
  log-likelihood.

The loss router's scoring primitive (``routing_window`` + ``mean_prompt_nll``) is shared by
the inference engine, which scores every candidate in one batched pass (serving/routing.py),
and by the routing accuracy a run's report carries (``bundle_routing_accuracy``, at the end
of each stage, in the worker). Both routers read a holdout example's prompt the same way
(``holdout_prompts``) and render it with the model's chat template (``prompt_ids``), in the
engine and in the report alike, so the report measures the router the engine runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from crma_core.continual_state import CENTROID_FILE, holdout_path, read_state

# Longer prompts are scored on their last tokens: the cost stays bounded and the tail is
# where a chat prompt's own words are (the template's system text comes first).
MAX_ROUTE_TOKENS = 256
# A text example (loss on every token) is routed on its beginning, as a user's prompt would be.
TEXT_PROMPT_CHARS = 300
METHOD = "lowest mean prompt NLL among the domain adapters (LoRA + CRMA)"
CENTROID_METHOD = ("nearest domain centroid of the base model's prompt features (every "
                   "layer's mean hidden state), cosine after centring")
# Training prompts a domain's centroid averages (the first ones of its training file).
CENTROID_PROMPTS = 64
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


def prompt_features(hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """One prompt's features from a decoder's hidden states (embeddings + every layer, each
    (1, T, H)): each layer's mean over the tokens, unit length per layer, concatenated
    -> (L·H,) float32. Every layer, not a chosen one: no layer is tuned on anyone's data."""
    return torch.cat([F.normalize(h[0].float().mean(dim=0), dim=-1) for h in hidden_states])


@torch.no_grad()
def decoder_features(decoder: torch.nn.Module, window: Sequence[int]) -> torch.Tensor:
    """``prompt_features`` of one routing window run through ``decoder`` (the causal LM's
    decoder stack, ``get_decoder()``: no LM head). The caller switches adapters off."""
    device = next(decoder.parameters()).device
    out = decoder(input_ids=torch.tensor([list(window)], device=device),
                  output_hidden_states=True, use_cache=False)
    return prompt_features(out.hidden_states)


def centroid_of(features: torch.Tensor) -> torch.Tensor:
    """A domain's centroid from its prompts' features (N, D): the mean of unit vectors."""
    return F.normalize(features.float(), dim=-1).mean(dim=0)


def centroid_scores(features: torch.Tensor, centroids: torch.Tensor) -> list[float]:
    """Cosine similarity of one prompt's features (D,) to each centroid (K, D), both
    centred on the centroids' mean so the part every domain shares (the chat template,
    the language) does not decide; higher is nearer."""
    centroids = centroids.float().to(features.device)
    centre = centroids.mean(dim=0)
    point = F.normalize(features.float(), dim=-1) - centre
    return F.cosine_similarity(point[None], centroids - centre, dim=-1).tolist()


def save_centroid(centroid: torch.Tensor, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"centroid": centroid.detach().float().cpu().contiguous()}, str(path))
    return path


def load_centroid(path: Path) -> torch.Tensor:
    return load_file(str(path))["centroid"]


@torch.no_grad()
def domain_centroid(decoder: torch.nn.Module, tokenizer: Any, train_file: Path, *,
                    limit: int = CENTROID_PROMPTS) -> torch.Tensor | None:
    """The centroid of a domain's first ``limit`` training prompts (``holdout_prompts``'
    reading of any format) under ``decoder`` with its adapters off; None if none fits."""
    rows = [decoder_features(decoder, routing_window(ids))
            for fields in holdout_prompts(Path(train_file), limit=limit)
            if (ids := prompt_ids(tokenizer, **fields))]
    return centroid_of(torch.stack(rows)) if rows else None


def write_centroids(model_dir: Path, lora_dirs: Mapping[Path, Path]) -> None:
    """For adapters trained outside a continual run: each training file's centroid (keys)
    under ``model_dir``'s base model, written into its LoRA folder (values) where a stage's
    bundle keeps it (``CENTROID_FILE``)."""
    from crma_core.recipe import load_base_model, load_tokenizer

    base, tokenizer = load_base_model(Path(model_dir)).eval(), load_tokenizer(Path(model_dir))
    for train_file, lora_dir in lora_dirs.items():
        centroid = domain_centroid(base.get_decoder(), tokenizer, train_file)
        if centroid is not None:
            save_centroid(centroid, Path(lora_dir) / CENTROID_FILE)


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


def accuracy_report(confusion: Mapping[str, Mapping[str, int]], *, method: str = METHOD,
                    times_ms: Sequence[float] = (), skipped: int = 0) -> dict[str, Any]:
    """Accuracy overall and per domain from ``confusion[true][chosen]`` counts."""
    per = {name: {"examples": sum(row.values()),
                  "accuracy": row.get(name, 0) / sum(row.values()) if row else None}
           for name, row in confusion.items()}
    total = sum(p["examples"] for p in per.values())
    correct = sum(confusion[name].get(name, 0) for name in confusion)
    times = sorted(times_ms)
    return {"method": method, "accuracy": correct / total if total else None,
            "examples": total, "skipped": skipped, "per_domain": per,
            "confusion": {name: dict(row) for name, row in confusion.items()},
            "ms_p50": times[len(times) // 2] if times else None,
            "ms_mean": sum(times) / len(times) if times else None}


def prompts_per_domain(domains: int) -> int:
    return max(MIN_PER_DOMAIN, min(MAX_PER_DOMAIN, SCORING_BUDGET // max(1, domains * domains)))


def _holdout_windows(tokenizer: Any, holdouts: Mapping[str, Path], per_domain: int,
                     limit: int | None) -> tuple[dict[str, list[list[int]]], int]:
    """The routing windows of each domain's first holdout prompts, and how many were
    skipped (too long for the context, as the engine would refuse them)."""
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
    return prompts, skipped


def _confusion(names: Sequence[str], holdouts: Mapping[str, Path],
               choices: Mapping[tuple[str, int], int]) -> dict[str, dict[str, int]]:
    confusion: dict[str, dict[str, int]] = {name: {} for name in holdouts}
    for (name, _), chosen in choices.items():
        confusion[name][names[chosen]] = confusion[name].get(names[chosen], 0) + 1
    return confusion


# no_grad, not inference_mode: the CRMA handle's weights are loaded again per domain.
@torch.no_grad()
def bundle_routing_accuracy(model_dir: Path, bundle_dir: Path, holdouts: Mapping[str, Path], *,
                            per_domain: int | None = None, device: str = "cpu",
                            context_length: int | None = None) -> dict[str, Any] | None:
    """Route the first prompts of each domain's holdout among the domains of a continual
    run's bundle (``crma_core.continual_state.export_bundle``); the report of
    ``accuracy_report`` plus ``router`` ("centroid" or "prompt_loss"). None when there is
    nothing to choose between (one domain, or one adapter for every domain as in naive mode).

    ``holdouts``: domain name -> holdout file. With a centroid in every domain's LoRA
    directory, each prompt's base-model features go to the nearest centroid (the engine's
    choice); otherwise each prompt is scored under every domain's served pair (LoRA + the
    CRMA state the manifest names), one forward pass each. Prompts that do not fit
    ``context_length`` are skipped, as the engine would refuse them.
    """
    import time

    from crma_core.recipe import load_base_model, load_tokenizer

    bundle_dir, model_dir = Path(bundle_dir), Path(model_dir)
    entries = json.loads((bundle_dir / "manifest.json").read_text())["domains"]
    if len(entries) < 2 or len({(e["lora"], e.get("crma")) for e in entries}) < 2:
        return None
    per_domain = per_domain or prompts_per_domain(len(entries))
    tokenizer = load_tokenizer(model_dir)
    base = load_base_model(model_dir, device=device)
    base.eval()
    limit = context_length or getattr(base.config, "max_position_embeddings", None)
    prompts, skipped = _holdout_windows(tokenizer, holdouts, per_domain, limit)
    centroid_files = [bundle_dir / e["lora"] / CENTROID_FILE for e in entries]
    started = time.perf_counter()
    if all(path.is_file() for path in centroid_files):
        router, method = "centroid", CENTROID_METHOD
        centroids = torch.stack([load_centroid(path) for path in centroid_files])
        decoder = base.get_decoder()
        choices = {}
        for name, rows in prompts.items():
            for j, window in enumerate(rows):
                scores = centroid_scores(decoder_features(decoder, window), centroids)
                choices[(name, j)] = max(range(len(scores)), key=scores.__getitem__)
    else:
        router, method = "prompt_loss", METHOD
        choices = _loss_choices(base, bundle_dir, entries, prompts)
    decisions = max(1, len(choices))
    per_decision_ms = (time.perf_counter() - started) * 1000 / decisions
    report = accuracy_report(_confusion([e["name"] for e in entries], holdouts, choices),
                             method=method, skipped=skipped)
    report.update(router=router, prompts_per_domain=per_domain,
                  scoring_ms_per_prompt=round(per_decision_ms, 3))
    return report


def _loss_choices(base: torch.nn.Module, bundle_dir: Path, entries: Sequence[dict[str, Any]],
                  prompts: Mapping[str, list[list[int]]]) -> dict[tuple[str, int], int]:
    """The loss router's choice for every prompt: each scored under every domain's pair."""
    from peft import PeftModel

    from crma_core.io import load_crma, load_crma_into

    model = PeftModel.from_pretrained(base, str(bundle_dir / entries[0]["lora"]),
                                      adapter_name="d0", is_trainable=False)
    for index, entry in enumerate(entries[1:], start=1):
        model.load_adapter(str(bundle_dir / entry["lora"]), adapter_name=f"d{index}",
                           is_trainable=False)
    crma_dirs = [bundle_dir / e["crma"] if e.get("crma") else None for e in entries]
    first = next((d for d in crma_dirs if d is not None), None)
    crma = load_crma(model, first) if first is not None else None
    model.eval()
    scores: dict[tuple[str, int], list[float]] = {}
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
    return {key: min(range(len(row)), key=row.__getitem__) for key, row in scores.items()}


def state_routing_accuracy(model_dir: Path, state_dir: Path, bundle_dir: Path, *,
                           device: str = "cpu") -> dict[str, Any] | None:
    """``bundle_routing_accuracy`` of a stage's bundle on the holdouts its state stores."""
    state = read_state(Path(state_dir))
    holdouts = {entry["name"]: holdout_path(Path(state_dir), entry)
                for entry in state["domains"]}
    return bundle_routing_accuracy(model_dir, bundle_dir, holdouts, device=device)
