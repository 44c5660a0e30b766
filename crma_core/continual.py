"""Continual learning over sequential domains: one runner for the modular, frozen and naive
modes (docs/crma.md, "Continual learning"), stage by stage.

A stage trains ONE domain and scores every domain seen so far, filling row t of the loss
matrix L[t][i] (mean response-token cross-entropy per token over domain i's whole holdout;
every token counts for ``text`` data):

    state_in (None for the first domain) --run_stage(domain)--> state_out

- modular: domain t gets a fresh LoRA ``d<t>``; the one CRMA keeps training through every
  domain; row t scores domain i with LoRA i + the current (shared) CRMA. Each domain is
  served by its LoRA and one CRMA snapshot chosen under the run's drift budget
  (``crma_core.serving``): the shared CRMA where it stays within the budget, else the state
  it was served with before (at first, the CRMA its own stage ended with: drift 0).
- frozen: domain t gets a fresh LoRA ``d<t>``; no CRMA in the forward pass; domain i is
  scored with LoRA i alone (its drift is 0 by construction).
- naive: one LoRA (``shared``) keeps training through every domain; no CRMA.

With ``baseline`` a stage also trains a plain LoRA ``b<t>`` (CRMA off): what frozen mode
trains for that domain, so the report has frozen's losses within the run. With a general
holdout (text of no domain), every served adapter is also scored on it against the base.

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
from crma_core.continual_state import (CRMA_DIR, GENERAL_HOLDOUT, HOLDOUTS_DIR, LORAS_DIR,
                                       ContinualConfig, DomainSpec, adapter_name,
                                       base_model_identity, crma_state_dir, holdout_path,
                                       load_lora, read_state)
from crma_core.data import load_examples, pack_examples
from crma_core.errors import CheckpointError, ConfigError
from crma_core.io import load_crma_into, sha256_file
from crma_core.loop import LoopPlan, LoopState, evaluate_loss, run_evaluation, train_loop
from crma_core.optim import make_optimizer
from crma_core.recipe import BuiltModel, build_model, lora_config, optimizer_groups
from crma_core.serving import choose_serving
from crma_core.continual_output import StageOutput, clone_crma
from crma_core.continual_scoring import FINISHED, StageScoring, stage_seed

__all__ = ["ContinualConfig", "DomainSpec", "StageResult", "ContinualRunner", "run_stage",
           "run_continual", "stage_seed"]

@dataclass
class StageResult:
    """How one domain's stage ended. ``row`` (L[index][i] for i ≤ index), ``report``
    (``crma_core.drift.continual_report`` of the run so far) and ``state_dir`` are None
    when the stage stopped before finishing (``stop_reason`` not in FINISHED).
    ``trained_tokens`` are the run's own; ``baseline_trained_tokens`` those of the baseline
    LoRA trained alongside (``ContinualConfig.baseline``; 0 without), billed apart."""

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
    baseline_trained_tokens: int = 0
    baseline_loss: float | None = None
    baseline_seconds: float = 0.0
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
                "baseline_trained_tokens": self.baseline_trained_tokens,
                "baseline_loss": self.baseline_loss,
                "train_seconds": round(self.train_seconds, 3),
                "eval_seconds": round(self.eval_seconds, 3),
                "baseline_seconds": round(self.baseline_seconds, 3)}


class ContinualRunner(StageScoring, StageOutput):
    """A continual run in memory: the base model with every domain's LoRA (and the CRMA with
    the snapshots that serve earlier domains).

    ``ContinualRunner(model_dir=..., config=..., general_holdout=...)`` starts a run;
    ``from_state`` continues one from a state directory. ``train_domain`` runs one stage,
    ``save_state`` writes the state directory, ``close`` frees the model and temporary files.
    ``general_holdout`` (JSONL, text of none of the domains) is read by the first stage and
    kept in the state; without it the report has no general-retention figures.
    """

    def __init__(self, *, model_dir: Path, config: ContinualConfig,
                 general_holdout: Path | None = None):
        self.model_dir = Path(model_dir)
        self.config = config
        self.built: BuiltModel | None = None
        self.domains: list[dict[str, Any]] = []  # state.json "domains" entries
        self.matrix: list[list[float]] = []
        self.served: list[list[int]] = []  # modular: serving stage of each domain, per stage
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}  # CRMA after stage k
        self.general: dict[str, Any] | None = None  # {"holdout", "sha256", "base_loss"}
        self._general_source = Path(general_holdout) if general_holdout else None
        self._workdir = Path(tempfile.mkdtemp(prefix="crma-continual-"))
        self._holdouts: dict[str, list] = {}  # key -> eval batches
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
        adapters += [e["baseline"]["adapter"] for e in state["domains"] if e.get("baseline")]
        self._build(adapters[0], seed=stage_seed(self.config.seed, 0))
        model = self.built.model
        for adapter in adapters:
            if adapter not in model.peft_config:
                model.add_adapter(adapter, lora_config(self.config.lora))
            load_lora(model, adapter, state_dir / LORAS_DIR / adapter)
        copies = [(e["holdout"], holdout_path(state_dir, e)) for e in state["domains"]]
        copies += [(e["route_centroid"], state_dir / e["route_centroid"])
                   for e in state["domains"] if e.get("route_centroid")]
        if state.get("general"):
            copies.append((GENERAL_HOLDOUT, holdout_path(state_dir, state["general"])))
            self.general = dict(state["general"])
        for relative, source in copies:
            copy = self._workdir / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
        self.domains = [dict(entry) for entry in state["domains"]]
        self.matrix = [list(row) for row in state["matrix"]]
        self.served = [list(row) for row in state.get("served") or []]
        crma = self.built.crma
        if crma is not None:
            for k in state.get("crma_states") or []:
                load_crma_into(crma, state_dir / crma_state_dir(k))
                self.snapshots[k] = clone_crma(crma)
            load_crma_into(crma, state_dir / CRMA_DIR)
            self.snapshots[len(self.domains) - 1] = clone_crma(crma)

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
        from its checkpoint in a new runner). The baseline LoRA trains after the domain's
        own LoRA and is not checkpointed: a stop during it checkpoints the finished main
        phase, and the resumed stage trains the baseline again from its start.
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
        if index == 0 and self._general_source is not None:
            general_copy = self._workdir / GENERAL_HOLDOUT
            shutil.copy2(self._general_source, general_copy)
            self.general = {"holdout": GENERAL_HOLDOUT, "holdout_sha256": sha256_file(general_copy)}
        self._prepare_model(index, adapter)
        tokenizer = self.built.tokenizer
        rows, _ = load_examples(Path(domain.train_file), tokenizer, max_seq_len=cfg.max_seq_len)
        rows = pack_examples(rows, cfg.max_seq_len) if cfg.packing else rows
        holdout = self._eval_batches(f"d{index}", holdout_copy)
        model, crma = self.built.model, self.built.crma

        base_loss = self._base_loss(holdout) if self.config.score_base else None
        centroid = self._route_centroid(index, Path(domain.train_file))
        if self.general is not None and "base_loss" not in self.general:
            self.general["base_loss"] = self._base_loss(self._general_batches())
        self._activate(adapter, trainable=True)
        optimizer = make_optimizer(**optimizer_groups(model, crma), lr_main=cfg.lr_main,
                                   lr_rw=cfg.lr_rw, lr_mix=cfg.lr_mix, lr_gate=cfg.lr_gate,
                                   weight_decay=cfg.weight_decay)
        clipper = make_clipper(cfg.clip, cfg.max_grad_norm)
        plan = self._plan(index)
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
            return self._stopped(result, reason, state, checkpoint, callbacks,
                                 checkpoint_on_stop)

        started = time.perf_counter()
        row = [self._score(i) for i in range(index + 1)]
        if cfg.eval_every and state.last_eval_step != state.step:
            run_evaluation(lambda: row[index], state, callbacks)  # the final validation loss
        self._activate(adapter, trainable=False)
        serving = self._serving(row)
        general = self._general_losses(index, serving)
        result.eval_seconds = time.perf_counter() - started

        baseline = None
        if self.config.baseline:
            baseline = self._train_baseline(index, rows, holdout, callbacks, result)
            if baseline is None:
                # The checkpoint holds the trainable LoRA: make it the domain's own again (its
                # finished phase), so the resumed stage skips to scoring and the baseline.
                self._activate(adapter, trainable=True)
                return self._stopped(result, result.stop_reason, state, checkpoint, callbacks,
                                     checkpoint_on_stop)
        del optimizer
        self._commit(index, domain, adapter, holdout_copy, base_loss, row, serving, general,
                     baseline, centroid)
        result.row = row
        result.report = self.report()
        self.domains[-1]["stage"] = result.summary()
        return result

    def _plan(self, index: int) -> LoopPlan:
        cfg = self.config.train
        return LoopPlan(epochs=cfg.epochs, batch_size=cfg.batch_size,
                        seed=stage_seed(self.config.seed, index),
                        pad_id=self.built.tokenizer.pad_token_id, max_steps=cfg.max_steps,
                        token_budget=cfg.token_budget, eval_every=cfg.eval_every,
                        checkpoint_every_steps=cfg.checkpoint_every_steps,
                        checkpoint_every_seconds=cfg.checkpoint_every_seconds,
                        lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps)

    def _stopped(self, result: StageResult, reason: str, state: LoopState, checkpoint,
                 callbacks: TrainCallbacks, checkpoint_on_stop: Collection[str]) -> StageResult:
        if reason in checkpoint_on_stop and callbacks.on_checkpoint and state.step:
            checkpoint(state)
        self._broken = f"stage {result.index} stopped ({reason}) before finishing"
        return result

    def _serving(self, row: list[float]) -> list[int] | None:
        """Modular: which CRMA snapshot serves each domain after this stage's row."""
        if self.built.crma is None:
            return None
        return choose_serving(self.matrix + [row], self.served[-1] if self.served else None,
                              self.config.drift_budget_pct)

    def _commit(self, index: int, domain: DomainSpec, adapter: str, holdout_copy: Path,
                base_loss: float | None, row: list[float], serving: list[int] | None,
                general: dict[int, float], baseline: dict[str, Any] | None,
                centroid: str | None) -> None:
        """Record a finished stage: its domain entry, matrix row, serving and snapshots."""
        self.domains.append({
            "index": index, "name": domain.name, "adapter": adapter,
            "holdout": f"{HOLDOUTS_DIR}/d{index}.jsonl",
            "holdout_sha256": sha256_file(holdout_copy),
            "train_sha256": sha256_file(Path(domain.train_file)),
            "base_loss": base_loss, "baseline": baseline, "route_centroid": centroid,
        })
        for i, loss in general.items():
            self.domains[i]["general_loss"] = loss
        self.matrix.append(row)
        if serving is not None:
            self.served.append(serving)
            self.snapshots[index] = clone_crma(self.built.crma)
            keep = set(serving)
            self.snapshots = {k: v for k, v in self.snapshots.items() if k in keep}

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

    def close(self) -> None:
        """Unhook CRMA, drop the model, delete temporary files."""
        if self.built is not None and self.built.crma is not None:
            self.built.crma.remove()
        self.built = None
        self._holdouts.clear()
        self.snapshots.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_stage(state_in: Path | None, domain: DomainSpec, state_out: Path, *, model_dir: Path,
              config: ContinualConfig | None = None, callbacks: TrainCallbacks | None = None,
              resume_from: Path | None = None, checkpoint_on_stop: Collection[str] = (),
              general_holdout: Path | None = None) -> StageResult:
    """Add one domain to a run: load ``state_in`` (None starts the run with ``config`` and,
    optionally, ``general_holdout``), train and score ``domain``, write ``state_out`` when
    the stage finishes.

    What a worker calls for one stage job. The result equals what the same domain gives
    as part of a one-process ``run_continual`` over all domains.
    """
    if state_in is None:
        if config is None:
            raise ConfigError("the first stage needs a ContinualConfig")
        runner = ContinualRunner(model_dir=model_dir, config=config,
                                 general_holdout=general_holdout)
    else:
        if general_holdout is not None:
            raise ConfigError("the general holdout is fixed by the first stage (kept in the "
                              "state); later stages take none")
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
                  state_root: Path | None = None, callbacks: TrainCallbacks | None = None,
                  general_holdout: Path | None = None) -> list[StageResult]:
    """Train every domain in order in one process; with ``state_root``, also write the state
    after each domain to ``state_root/stage-<t>``. Stops early if a stage does not finish."""
    runner = ContinualRunner(model_dir=model_dir, config=config, general_holdout=general_holdout)
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
