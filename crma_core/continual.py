"""Continual learning over sequential domains: one runner for the modular, frozen and naive
modes (docs/crma.md, "Continual learning"), stage by stage.

A stage trains ONE domain and scores every domain seen so far, filling row t of the loss
matrix L[t][i] (mean response-token cross-entropy per token over domain i's whole holdout;
every token counts for ``text`` data):

    state_in (None for the first domain) --run_stage(domain)--> state_out

- modular: domain t gets a fresh LoRA ``d<t>``; the one CRMA keeps training through every
  domain; domain i is scored with LoRA i + the current CRMA.
- frozen: domain t gets a fresh LoRA ``d<t>``; no CRMA in the forward pass; domain i is
  scored with LoRA i alone (its drift is 0 by construction).
- naive: one LoRA (``shared``) keeps training through every domain; no CRMA.

While domain t trains, only its LoRA (plus the CRMA in modular mode) is in the forward pass
and in the optimizer, so earlier LoRAs stay bit-for-bit unchanged. Everything random in a
stage is seeded from (run seed, stage index): the new LoRA's init, the data order; CRMA's
init from the run seed. A stage therefore computes the same thing whether it runs in the
process that trained the earlier domains (``run_continual``) or later, from the stored state
(``run_stage``), and the same seed gives modular and frozen the same LoRA inits and batches.
Optimizer policy (recorded in the state): fresh AdamW moments, clipper and LR schedule for
every domain, CRMA included (its weights carry over, its moments do not).

Reuses crma_core's pieces: ``recipe.build_model``, ``optim.make_optimizer``,
``loop.train_loop`` / ``evaluate_loss``, ``data.load_examples``, ``checkpoint`` (a stage can
be checkpointed and resumed mid-domain like a single-task run).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crma_core.callbacks import TrainCallbacks
from crma_core.checkpoint import (
    load_checkpoint,
    read_run_settings,
    save_checkpoint,
    settings_difference,
)
from crma_core.clipping import make_clipper
from crma_core.continual_state import (CRMA_DIR, HOLDOUTS_DIR, LORAS_DIR, OPTIMIZER_POLICY,
                                       REPORT_FILE, STATE_FILE, STATE_FORMAT, STATE_VERSION,
                                       ContinualConfig, DomainSpec, adapter_name,
                                       base_model_identity, begin_state_dir, finish_state_dir,
                                       holdout_path, load_lora, read_state, save_lora)
from crma_core.data import eval_batches, load_examples, pack_examples
from crma_core.drift import continual_report
from crma_core.errors import CheckpointError, ConfigError
from crma_core.io import load_crma_into, save_crma, sha256_file, write_json
from crma_core.loop import LoopPlan, LoopState, evaluate_loss, run_evaluation, train_loop
from crma_core.optim import make_optimizer
from crma_core.recipe import BuiltModel, build_model, lora_config, optimizer_groups

__all__ = ["ContinualConfig", "DomainSpec", "StageResult", "ContinualRunner", "run_stage",
           "run_continual", "stage_seed"]

# Stop reasons after which a stage is complete: the domain is scored and the state written.
FINISHED = ("completed", "max_steps", "budget")


def stage_seed(seed: int, index: int) -> int:
    """The seed of stage ``index`` of a run with seed ``seed`` (LoRA init, data order)."""
    return seed * 100_003 + index


@dataclass
class StageResult:
    """How one domain's stage ended. ``row`` (L[index][i] for i ≤ index), ``report``
    (``crma_core.drift.continual_report`` of the matrix so far) and ``state_dir`` are None
    when the stage stopped before finishing (``stop_reason`` not in FINISHED)."""

    index: int
    domain: str
    stop_reason: str
    steps: int
    trained_tokens: int
    final_train_loss: float | None
    peak_grad_norm: float | None
    mean_grad_norm: float | None
    base_loss: float | None
    row: list[float] | None
    report: dict[str, Any] | None
    state_dir: Path | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.stop_reason in FINISHED

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures of the stage (no history)."""
        return {"index": self.index, "domain": self.domain, "stop_reason": self.stop_reason,
                "steps": self.steps, "trained_tokens": self.trained_tokens,
                "final_train_loss": self.final_train_loss,
                "peak_grad_norm": self.peak_grad_norm, "mean_grad_norm": self.mean_grad_norm,
                "base_loss": self.base_loss, "row": self.row,
                "train_seconds": round(self.train_seconds, 3),
                "eval_seconds": round(self.eval_seconds, 3)}


class ContinualRunner:
    """A continual run in memory: the base model with every domain's LoRA (and the CRMA).

    ``ContinualRunner(model_dir=..., config=...)`` starts a run; ``from_state`` continues one
    from a state directory. ``train_domain`` runs one stage, ``save_state`` writes the state
    directory, ``close`` frees the model and temporary files.
    """

    def __init__(self, *, model_dir: Path, config: ContinualConfig):
        self.model_dir = Path(model_dir)
        self.config = config
        self.built: BuiltModel | None = None
        self.domains: list[dict[str, Any]] = []  # state.json "domains" entries
        self.matrix: list[list[float]] = []
        self._workdir = Path(tempfile.mkdtemp(prefix="crma-continual-"))
        self._holdouts: dict[str, list] = {}  # adapter -> eval batches
        self._broken: str | None = None

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_state(cls, state_dir: Path, *, model_dir: Path,
                   config: ContinualConfig | None = None) -> ContinualRunner:
        """Rebuild a run from its state directory. ``config`` may differ from the stored
        one only in STAGE_MAY_CHANGE train settings (device, budgets, eval/checkpoint
        intervals); None keeps the stored config."""
        state_dir = Path(state_dir)
        state = read_state(state_dir)
        stored = ContinualConfig.from_dict(state["config"])
        if config is not None and config.fixed_part() != stored.fixed_part():
            raise ConfigError("a later stage must use the run's settings; differences: "
                              f"{settings_difference(stored.fixed_part(), config.fixed_part())}")
        if state["base_model"] != base_model_identity(model_dir):
            raise CheckpointError(f"the state was trained on base model {state['base_model']}, "
                                  f"not {base_model_identity(model_dir)}")
        runner = cls(model_dir=model_dir, config=config or stored)
        try:
            runner._load(state_dir, state)
        except Exception:
            runner.close()
            raise
        return runner

    def _load(self, state_dir: Path, state: dict[str, Any]) -> None:
        adapters = list(dict.fromkeys(e["adapter"] for e in state["domains"]))
        self._build(adapters[0], seed=stage_seed(self.config.seed, 0))
        model = self.built.model
        for adapter in adapters:
            if adapter not in model.peft_config:
                model.add_adapter(adapter, lora_config(self.config.lora))
            load_lora(model, adapter, state_dir / LORAS_DIR / adapter)
        if self.built.crma is not None:
            load_crma_into(self.built.crma, state_dir / CRMA_DIR)
        for entry in state["domains"]:
            copy = self._workdir / entry["holdout"]
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(holdout_path(state_dir, entry), copy)
            self.domains.append(dict(entry))
        self.matrix = [list(row) for row in state["matrix"]]

    def _build(self, first_adapter: str, *, seed: int) -> None:
        cfg = self.config.train
        self.built = build_model(
            self.model_dir, lora=self.config.lora,
            crma=self.config.crma if self.config.uses_crma else None, device=cfg.device,
            dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing, seed=seed,
            adapter_name=first_adapter)

    # -- one stage ---------------------------------------------------------------------------
    def train_domain(self, domain: DomainSpec, *, callbacks: TrainCallbacks | None = None,
                     resume_from: Path | None = None,
                     checkpoint_on_stop: Collection[str] = ()) -> StageResult:
        """Train domain ``len(self.domains)``, then score every seen domain (see module doc).

        ``callbacks`` as for Recipe (on_step, on_eval, should_stop, on_checkpoint);
        ``resume_from`` is a checkpoint written by this stage's ``on_checkpoint``. A stage
        stopped by ``should_stop`` returns its result without scoring (after one more
        checkpoint through ``on_checkpoint`` if the reason is in ``checkpoint_on_stop``, e.g.
        a worker's warm shutdown); the runner can then only be closed (the stage continues
        from its checkpoint in a new runner).
        """
        if self._broken:
            raise RuntimeError(f"this runner cannot continue: {self._broken}")
        callbacks = callbacks or TrainCallbacks()
        cfg = self.config.train
        index = len(self.domains)
        adapter = adapter_name(self.config.mode, index)
        # Validate and copy the data before touching the model: a bad file fails fast.
        holdout_copy = self._workdir / HOLDOUTS_DIR / f"d{index}.jsonl"
        holdout_copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(domain.holdout_file, holdout_copy)
        self._prepare_model(index, adapter)
        tokenizer = self.built.tokenizer
        rows, _ = load_examples(Path(domain.train_file), tokenizer, max_seq_len=cfg.max_seq_len)
        rows = pack_examples(rows, cfg.max_seq_len) if cfg.packing else rows
        holdout = self._eval_batches(f"d{index}", holdout_copy)
        model, crma = self.built.model, self.built.crma

        base_loss = self._base_loss(holdout) if self.config.score_base else None
        self._activate(adapter, trainable=True)
        optimizer = make_optimizer(**optimizer_groups(model, crma), lr_main=cfg.lr_main,
                                   lr_mix=cfg.lr_mix, lr_gate=cfg.lr_gate,
                                   weight_decay=cfg.weight_decay)
        clipper = make_clipper(cfg.clip, cfg.max_grad_norm)
        plan = LoopPlan(epochs=cfg.epochs, batch_size=cfg.batch_size,
                        seed=stage_seed(self.config.seed, index), pad_id=tokenizer.pad_token_id,
                        max_steps=cfg.max_steps, token_budget=cfg.token_budget,
                        eval_every=cfg.eval_every,
                        checkpoint_every_steps=cfg.checkpoint_every_steps,
                        checkpoint_every_seconds=cfg.checkpoint_every_seconds,
                        lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps)
        run_settings = {"continual": {"stage": index, "domain": domain.name,
                                      "config": self.config.fixed_part()}}
        state = LoopState()
        if resume_from is not None:
            if read_run_settings(Path(resume_from)) != run_settings:
                raise CheckpointError("the checkpoint belongs to another stage or settings")
            state = load_checkpoint(Path(resume_from), model=model, crma=crma,
                                    optimizer=optimizer, clipper=clipper)

        def evaluate() -> float:
            return evaluate_loss(model, holdout)

        def checkpoint(loop_state: LoopState) -> None:
            directory = Path(tempfile.mkdtemp(prefix=f"crma-cl-ckpt-{loop_state.step}-"))
            try:
                save_checkpoint(directory, model=model, crma=crma, optimizer=optimizer,
                                clipper=clipper, state=loop_state, run=run_settings)
                callbacks.on_checkpoint(loop_state.step, directory)
            finally:
                shutil.rmtree(directory, ignore_errors=True)

        started = time.perf_counter()
        reason = train_loop(model=model, rows=rows, optimizer=optimizer, clipper=clipper,
                            state=state, plan=plan, callbacks=callbacks,
                            crma_stats=crma.stats if crma is not None else None,
                            evaluate=evaluate if cfg.eval_every else None,
                            checkpoint=checkpoint if callbacks.on_checkpoint else None)
        train_seconds = time.perf_counter() - started
        result = StageResult(
            index=index, domain=domain.name, stop_reason=reason, steps=state.step,
            trained_tokens=state.trained_tokens, final_train_loss=state.last_loss,
            peak_grad_norm=state.grad_norm_peak, mean_grad_norm=state.mean_grad_norm,
            base_loss=base_loss, row=None, report=None, train_seconds=train_seconds,
            history=state.history)
        if reason not in FINISHED:
            if reason in checkpoint_on_stop and callbacks.on_checkpoint and state.step:
                checkpoint(state)
            self._broken = f"stage {index} stopped ({reason}) before finishing"
            return result
        del optimizer

        started = time.perf_counter()
        row = [self._score(i) for i in range(index + 1)]
        if cfg.eval_every and state.last_eval_step != state.step:
            run_evaluation(lambda: row[index], state, callbacks)  # the final validation loss
        self._activate(adapter, trainable=False)
        result.eval_seconds = time.perf_counter() - started
        self.domains.append({
            "index": index, "name": domain.name, "adapter": adapter,
            "holdout": f"{HOLDOUTS_DIR}/d{index}.jsonl",
            "holdout_sha256": sha256_file(holdout_copy),
            "train_sha256": sha256_file(Path(domain.train_file)),
            "base_loss": base_loss,
        })
        self.matrix.append(row)
        result.row = row
        result.report = self.report()
        self.domains[-1]["stage"] = result.summary()
        return result

    def _prepare_model(self, index: int, adapter: str) -> None:
        """Make sure the model exists and has the adapter domain ``index`` trains."""
        seed = stage_seed(self.config.seed, index)
        if self.built is None:
            self._build(adapter, seed=seed)
            return
        model = self.built.model
        if adapter in model.peft_config:
            return  # naive: the shared LoRA keeps training
        torch.manual_seed(seed)  # the new LoRA's init depends on (seed, stage) only
        model.add_adapter(adapter, lora_config(self.config.lora))

    def _eval_batches(self, key: str, path: Path) -> list:
        if key not in self._holdouts:
            cfg = self.config.train
            rows, _ = load_examples(path, self.built.tokenizer, max_seq_len=cfg.max_seq_len)
            self._holdouts[key] = eval_batches(rows, batch_size=cfg.eval_batch_size or cfg.batch_size,
                                               pad_id=self.built.tokenizer.pad_token_id)
        return self._holdouts[key]

    def _activate(self, adapter: str, *, trainable: bool) -> None:
        """Put only ``adapter`` in the forward pass; only its LoRA requires grad if
        ``trainable`` (then the optimizer built from requires_grad holds it alone)."""
        model = self.built.model
        model.set_adapter(adapter)
        marker = f".{adapter}."
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(trainable and marker in name)

    def _base_loss(self, batches: list) -> float:
        """The untrained base model's loss: every LoRA and the CRMA switched off."""
        model, crma = self.built.model, self.built.crma
        if crma is not None:
            crma.enabled = False
        try:
            with model.disable_adapter():
                return evaluate_loss(model, batches)
        finally:
            if crma is not None:
                crma.enabled = True

    def _score(self, index: int) -> float:
        """L[now][index]: domain ``index``'s holdout with its LoRA (+ the current CRMA)."""
        entry_adapter = adapter_name(self.config.mode, index)
        self._activate(entry_adapter, trainable=False)
        path = self._workdir / HOLDOUTS_DIR / f"d{index}.jsonl"
        return evaluate_loss(self.built.model, self._eval_batches(f"d{index}", path))

    # -- output ------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """``crma_core.drift.continual_report`` of the matrix so far."""
        return continual_report(self.matrix, [d["name"] for d in self.domains],
                                [d.get("base_loss") for d in self.domains]
                                if self.config.score_base else None)

    def state_dict(self) -> dict[str, Any]:
        """The JSON written as state.json."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "mode": self.config.mode,
                "seed": self.config.seed, "config": self.config.to_dict(),
                "base_model": base_model_identity(self.model_dir),
                "optimizer_policy": OPTIMIZER_POLICY, "domains": self.domains,
                "matrix": self.matrix}

    def save_state(self, directory: Path) -> Path:
        """Write the state directory (see crma_core.continual_state); must be new or empty."""
        if self._broken:
            raise RuntimeError(f"cannot save: {self._broken}")
        if not self.domains:
            raise RuntimeError("no domain trained yet")
        tmp = begin_state_dir(Path(directory))
        try:
            model = self.built.model
            for adapter in dict.fromkeys(d["adapter"] for d in self.domains):
                save_lora(model, adapter, tmp / LORAS_DIR / adapter,
                          base_model_name=self.model_dir.name)
            if self.built.crma is not None:
                save_crma(self.built.crma, tmp / CRMA_DIR)
            (tmp / HOLDOUTS_DIR).mkdir()
            for entry in self.domains:
                shutil.copy2(self._workdir / entry["holdout"], tmp / entry["holdout"])
            write_json(tmp / REPORT_FILE, self.report())
            write_json(tmp / STATE_FILE, self.state_dict())
            return finish_state_dir(tmp, Path(directory))
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def close(self) -> None:
        """Unhook CRMA, drop the model, delete temporary files."""
        if self.built is not None and self.built.crma is not None:
            self.built.crma.remove()
        self.built = None
        self._holdouts.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_stage(state_in: Path | None, domain: DomainSpec, state_out: Path, *, model_dir: Path,
              config: ContinualConfig | None = None, callbacks: TrainCallbacks | None = None,
              resume_from: Path | None = None,
              checkpoint_on_stop: Collection[str] = ()) -> StageResult:
    """Add one domain to a run: load ``state_in`` (None starts the run with ``config``),
    train and score ``domain``, write ``state_out`` when the stage finishes.

    What a worker calls for one stage job. The result equals what the same domain gives
    as part of a one-process ``run_continual`` over all domains.
    """
    if state_in is None:
        if config is None:
            raise ConfigError("the first stage needs a ContinualConfig")
        runner = ContinualRunner(model_dir=model_dir, config=config)
    else:
        runner = ContinualRunner.from_state(Path(state_in), model_dir=model_dir, config=config)
    try:
        result = runner.train_domain(domain, callbacks=callbacks, resume_from=resume_from,
                                     checkpoint_on_stop=checkpoint_on_stop)
        if result.finished:
            result.state_dir = runner.save_state(Path(state_out))
        return result
    finally:
        runner.close()


def run_continual(domains: list[DomainSpec], *, model_dir: Path, config: ContinualConfig,
                  state_root: Path | None = None,
                  callbacks: TrainCallbacks | None = None) -> list[StageResult]:
    """Train every domain in order in one process; with ``state_root``, also write the state
    after each domain to ``state_root/stage-<t>``. Stops early if a stage does not finish."""
    runner = ContinualRunner(model_dir=model_dir, config=config)
    results = []
    try:
        for t, domain in enumerate(domains):
            result = runner.train_domain(domain, callbacks=callbacks)
            results.append(result)
            if not result.finished:
                break
            if state_root is not None:
                result.state_dir = runner.save_state(Path(state_root) / f"stage-{t}")
        return results
    finally:
        runner.close()

