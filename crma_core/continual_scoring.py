"""How a continual run scores and trains beside its domain's own LoRA: the holdouts, the base
model, each served pair on the general-text holdout, and the baseline LoRA (a mixin of
``crma_core.continual.ContinualRunner``, which owns ``built``, ``config``, ``general`` and the
work directory)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch

from crma_core.callbacks import TrainCallbacks
from crma_core.clipping import make_clipper
from crma_core.continual_state import (GENERAL_HOLDOUT, HOLDOUTS_DIR, ROUTING_DIR, adapter_name,
                                       baseline_adapter)
from crma_core.data import eval_batches, load_examples
from crma_core.loop import LoopState, evaluate_loss, train_loop
from crma_core.optim import make_optimizer
from crma_core.recipe import lora_config, optimizer_groups
from crma_core.routing import domain_centroid, save_centroid

FINISHED = ("completed", "max_steps", "budget")


def stage_seed(seed: int, index: int) -> int:
    """The seed of stage ``index`` of a run with seed ``seed`` (LoRA init, data order)."""
    return seed * 100_003 + index


class StageScoring:
    """Scoring and the baseline phase of a stage (see the module docstring)."""

    def _general_losses(self, index: int, serving: list[int] | None) -> dict[int, float]:
        """General-holdout loss of every served pair that changed in this stage."""
        if self.general is None:
            return {}
        if self.config.mode == "naive":
            return dict.fromkeys(range(index + 1), self._general_with(adapter_name("naive", 0)))
        changed = [index] if serving is None else [i for i, s in enumerate(serving) if s == index]
        return {i: self._general_with(adapter_name(self.config.mode, i)) for i in changed}

    def _general_with(self, adapter: str, *, crma_on: bool = True) -> float:
        self._activate(adapter, trainable=False)
        with self._crma_enabled(crma_on):
            return evaluate_loss(self.built.model, self._general_batches())

    def _train_baseline(self, index: int, rows: list, holdout: list,
                        callbacks: TrainCallbacks, result: StageResult) -> dict[str, Any] | None:
        """Train the plain LoRA ``b<index>`` with CRMA off (frozen mode's LoRA for this
        domain: same init and batches), score it; None if ``should_stop`` stopped it."""
        cfg, model = self.config.train, self.built.model
        adapter = baseline_adapter(index)
        torch.manual_seed(stage_seed(self.config.seed, index))  # as frozen mode's d<index>
        model.add_adapter(adapter, lora_config(self.config.lora))
        self._activate(adapter, trainable=True)
        optimizer = make_optimizer(**optimizer_groups(model, None), lr_main=cfg.lr_main,
                                   weight_decay=cfg.weight_decay)
        state = LoopState()
        started = time.perf_counter()
        with self._crma_enabled(False):
            reason = train_loop(model=model, rows=rows, optimizer=optimizer,
                                clipper=make_clipper(cfg.clip, cfg.max_grad_norm), state=state,
                                plan=self._plan(index),
                                callbacks=TrainCallbacks(should_stop=callbacks.should_stop))
            result.baseline_trained_tokens = state.trained_tokens
            if reason not in FINISHED:
                result.stop_reason = reason
                return None
            loss = evaluate_loss(model, holdout)
        general = self._general_with(adapter, crma_on=False) if self.general else None
        self._activate(adapter, trainable=False)
        result.baseline_loss = loss
        result.baseline_seconds = time.perf_counter() - started
        return {"adapter": adapter, "loss": loss, "trained_tokens": state.trained_tokens,
                "general_loss": general}

    def _eval_batches(self, key: str, path: Path) -> list:
        if key not in self._holdouts:
            cfg = self.config.train
            rows, _ = load_examples(path, self.built.tokenizer, max_seq_len=cfg.max_seq_len)
            self._holdouts[key] = eval_batches(rows, batch_size=cfg.eval_batch_size or cfg.batch_size,
                                               pad_id=self.built.tokenizer.pad_token_id)
        return self._holdouts[key]

    def _general_batches(self) -> list:
        return self._eval_batches("general", self._workdir / GENERAL_HOLDOUT)

    def _activate(self, adapter: str, *, trainable: bool) -> None:
        """Put only ``adapter`` in the forward pass; only its LoRA requires grad if
        ``trainable`` (then the optimizer built from requires_grad holds it alone)."""
        model = self.built.model
        model.set_adapter(adapter)
        marker = f".{adapter}."
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(trainable and marker in name)

    @contextlib.contextmanager
    def _crma_enabled(self, enabled: bool):
        crma = self.built.crma
        if crma is None:
            yield
            return
        before = crma.enabled
        crma.enabled = enabled
        try:
            yield
        finally:
            crma.enabled = before

    def _base_loss(self, batches: list) -> float:
        """The untrained base model's loss: every LoRA and the CRMA switched off."""
        with self._crma_enabled(False), self.built.model.disable_adapter():
            return evaluate_loss(self.built.model, batches)

    def _route_centroid(self, index: int, train_file: Path) -> str | None:
        """Domain ``index``'s routing centroid (crma_core.routing) from its training prompts
        under the untrained base model, written to the work directory; its path there (None
        in naive mode, whose one adapter serves every domain, or with no usable prompt)."""
        if self.config.mode == "naive":
            return None
        model = self.built.model
        was_training = model.training
        model.eval()
        try:
            with self._crma_enabled(False), model.disable_adapter():
                centroid = domain_centroid(model.get_base_model().get_decoder(),
                                           self.built.tokenizer, train_file)
        finally:
            model.train(was_training)
        if centroid is None:
            return None
        relative = f"{ROUTING_DIR}/d{index}.safetensors"
        save_centroid(centroid, self._workdir / relative)
        return relative

    def _score(self, index: int) -> float:
        """L[now][index]: domain ``index``'s holdout with its LoRA (+ the current CRMA)."""
        entry_adapter = adapter_name(self.config.mode, index)
        self._activate(entry_adapter, trainable=False)
        path = self._workdir / HOLDOUTS_DIR / f"d{index}.jsonl"
        return evaluate_loss(self.built.model, self._eval_batches(f"d{index}", path))
