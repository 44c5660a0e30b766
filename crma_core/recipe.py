"""Single-task fine-tuning: base model + peft LoRA (+ CRMA), written out step by step.

``Recipe`` wires the reusable pieces (``build_model``, ``crma_core.optim.make_optimizer``,
``crma_core.loop.train_loop`` / ``evaluate_loss``, checkpoints, artifacts) for one run.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crma_core import compile as crma_compile
from crma_core.artifacts import export_bundle, write_adapter
from crma_core.callbacks import CHECKPOINT_METRICS, CheckpointMetrics, TrainCallbacks, TrainResult
from crma_core.checkpoint import (
    load_checkpoint,
    read_run_settings,
    save_checkpoint,
    settings_difference,
)
from crma_core.clipping import make_clipper
from crma_core.config import CRMAConfig
from crma_core.data import eval_batches, load_examples, longest_row, pack_examples
from crma_core.errors import CheckpointError, ConfigError, QuantizationUnavailableError
from crma_core.io import write_json
from crma_core.loop import EvalResult, LoopPlan, LoopState, evaluate, run_evaluation, train_loop
from crma_core.loss import LossOptions
from crma_core.memory import plan_for_model
from crma_core.model import CRMAHandle, attach_crma
from crma_core.optim import make_optimizer
from crma_core.settings import LoraSettings, TrainConfig
from crma_core.snapshot import WeightSnapshot

__all__ = ["Recipe", "LoraSettings", "TrainConfig", "BuiltModel", "build_model",
           "prepare_model", "load_base_model", "load_tokenizer", "lora_config",
           "optimizer_groups"]

# Settings that do not change the computation (beyond fp rounding), so a resumed run may
# differ in them.
_RESUME_MAY_CHANGE = ("device", "checkpoint_every_steps", "checkpoint_every_seconds",
                      "eval_every", "eval_batch_size", "token_budget", "compile",
                      "loss_chunk_tokens", "micro_batch_size", "memory_budget_mb", "n_evals",
                      "n_checkpoints")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(model_dir: Path):
    """The model directory's tokenizer (local files only); pad falls back to eos."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True,
                                              trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_dir: Path, *, device: str = "cpu", dtype: str = "float32",
                    quantization: str | None = None) -> nn.Module:
    """AutoModelForCausalLM from a local directory; never downloads, never runs remote code.

    quantization="nf4" loads 4-bit NF4 weights (bitsandbytes) and needs CUDA.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True,
                                        trust_remote_code=False)
    kwargs: dict[str, Any] = {"dtype": _DTYPES[dtype], "local_files_only": True,
                              "use_safetensors": True,
                              "trust_remote_code": False}
    if config.model_type == "gemma2":
        kwargs["attn_implementation"] = "eager"  # sdpa ignores Gemma-2's logit soft-capping
    if quantization == "nf4":
        if not (device.startswith("cuda") and torch.cuda.is_available()):
            raise QuantizationUnavailableError(
                "QLoRA (nf4) needs a CUDA GPU; this run is on "
                f"{device!r}. Use quantization=None to train in {dtype} on this device.")
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise QuantizationUnavailableError(
                "QLoRA (nf4) needs the bitsandbytes package (pip install '.[gpu]')") from exc
        compute = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if quantization is None:
        model.to(device)
    model.config.use_cache = False
    return model


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=(list(settings.target_modules)
                        if isinstance(settings.target_modules, tuple)
                        else settings.target_modules),
        init_lora_weights="pissa" if settings.init == "pissa" else True,
        bias="none", task_type="CAUSAL_LM",
    )


@dataclass
class BuiltModel:
    """A trainable model: ``model`` is the PeftModel, ``crma`` the handle (or None)."""

    model: nn.Module
    tokenizer: Any
    crma: CRMAHandle | None
    family: str


def build_model(model_dir: Path, *, lora: LoraSettings, crma: CRMAConfig | None,
                device: str = "cpu", dtype: str = "float32",
                gradient_checkpointing: bool = False, seed: int = 0,
                adapter_name: str = "default") -> BuiltModel:
    """Frozen base + peft LoRA (named ``adapter_name``) + optional CRMA on every decoder layer.

    Seeds torch's global RNG with ``seed`` first so LoRA and CRMA start the same every time.
    """
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_dir)
    base = load_base_model(model_dir, device=device, dtype=dtype,
                           quantization=lora.quantization)
    model, handle = prepare_model(base, lora=lora, crma=crma,
                                  gradient_checkpointing=gradient_checkpointing, seed=seed,
                                  adapter_name=adapter_name)
    return BuiltModel(model=model, tokenizer=tokenizer, crma=handle,
                      family=base.config.model_type)


def prepare_model(base: nn.Module, *, lora: LoraSettings, crma: CRMAConfig | None,
                  gradient_checkpointing: bool = False, seed: int | None = 0,
                  adapter_name: str = "default") -> tuple[nn.Module, CRMAHandle | None]:
    """(PeftModel, CRMA handle or None) around an already loaded base model.

    k-bit preparation for a quantized base (``lora.quantization``), non-reentrant gradient
    checkpointing when asked, peft LoRA, then CRMA (its read init seeded by ``seed``). LoRA
    init draws from torch's global RNG: seed it first for a reproducible start.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if lora.quantization is not None:
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(base, lora_config(lora), adapter_name=adapter_name)
    handle = attach_crma(model, crma, seed=seed) if crma is not None else None
    return model, handle


def optimizer_groups(model: nn.Module, crma: CRMAHandle | None) -> dict[str, list[nn.Parameter]]:
    """{"main": LoRA, "rw": CRMA read/write, "mix": log_mix, "gate": _log_alpha}; base
    excluded."""
    main = [p for _, p in model.named_parameters() if p.requires_grad]
    groups = {"main": main, "rw": [], "mix": [], "gate": []}
    if crma is not None:
        crma_groups = crma.parameter_groups()
        groups["rw"] = crma_groups["rw"]
        groups["mix"] = crma_groups["mix"]
        groups["gate"] = crma_groups["gate"]
    return groups


class Recipe:
    """One single-task run: ``setup()``, ``train()``, ``save_checkpoint()``,
    ``export_artifacts()``, ``cleanup()``. See the module docstring for the pieces."""

    def __init__(self, *, model_dir: Path, train_file: Path, validation_file: Path | None = None,
                 crma: CRMAConfig | None = CRMAConfig(), lora: LoraSettings = LoraSettings(),
                 train: TrainConfig = TrainConfig(),
                 callbacks: TrainCallbacks | None = None):
        if lora.init == "pissa" and lora.quantization is not None:
            raise ConfigError("PiSSA with NF4 quantization is not supported here")
        self.model_dir = Path(model_dir)
        self.train_file = Path(train_file)
        self.validation_file = Path(validation_file) if validation_file else None
        self.crma_config = crma
        self.lora = lora
        self.train_config = train
        self.callbacks = callbacks or TrainCallbacks()
        self.built: BuiltModel | None = None
        self.state = LoopState()
        self._workdir: Path | None = None
        self._pissa_init: Path | None = None
        self.best: WeightSnapshot | None = None
        self.result: TrainResult | None = None

    # -- setup ------------------------------------------------------------------------------
    def run_settings(self) -> dict[str, Any]:
        """The settings a checkpoint must agree with to be resumed by this recipe."""
        return {
            "crma": self.crma_config.to_dict() if self.crma_config else None,
            "lora": self.lora.to_dict(),
            "train": {k: v for k, v in self.train_config.to_dict().items()
                      if k not in _RESUME_MAY_CHANGE},
        }

    def setup(self, resume_from: Path | None = None) -> None:
        """Load data and model, plan the micro-batches, build optimizer and clipper;
        optionally resume a checkpoint."""
        cfg = self.train_config
        self._workdir = Path(tempfile.mkdtemp(prefix="crma-recipe-"))
        self.built = build_model(self.model_dir, lora=self.lora, crma=self.crma_config,
                                 device=cfg.device, dtype=cfg.dtype,
                                 gradient_checkpointing=cfg.gradient_checkpointing,
                                 seed=cfg.seed)
        tokenizer = self.built.tokenizer
        rows, self.train_info = load_examples(self.train_file, tokenizer,
                                              max_seq_len=cfg.max_seq_len,
                                              train_on_inputs=cfg.train_on_inputs)
        self.rows = pack_examples(rows, cfg.max_seq_len) if cfg.packing else rows
        crma = self.crma_config
        self.memory_plan, memory = plan_for_model(
            self.built.model, width=longest_row(self.rows), lora=self.lora, train=cfg,
            crma_width=crma.n * crma.r if crma else 0)
        self.val_batches = None
        if self.validation_file is not None:
            val_rows, self.val_info = load_examples(self.validation_file, tokenizer,
                                                    max_seq_len=cfg.max_seq_len,
                                                    train_on_inputs=cfg.train_on_inputs)
            self.val_batches = eval_batches(
                val_rows, batch_size=cfg.eval_batch_size or self.memory_plan.micro_batch_size,
                pad_id=tokenizer.pad_token_id)
        if self.lora.init == "pissa":
            self._save_pissa_init()
        if cfg.compile:
            crma_compile.compile_for_training(self.built.model, self.built.crma)
        groups = optimizer_groups(self.built.model, self.built.crma)
        self.optimizer = make_optimizer(**groups, lr_main=cfg.lr_main, lr_rw=cfg.lr_rw,
                                        lr_mix=cfg.lr_mix, lr_gate=cfg.lr_gate,
                                        weight_decay=cfg.weight_decay)
        self.clipper = make_clipper(cfg.clip, cfg.max_grad_norm)
        plan = LoopPlan(
            epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
            pad_id=tokenizer.pad_token_id, max_steps=cfg.max_steps,
            token_budget=cfg.token_budget, eval_every=cfg.eval_every,
            checkpoint_every_steps=cfg.checkpoint_every_steps,
            checkpoint_every_seconds=cfg.checkpoint_every_seconds,
            lr_schedule=cfg.lr_schedule,
            loss=LossOptions(
                chunk_tokens=cfg.loss_chunk_tokens,
                compile_backend=crma_compile.DEFAULT_BACKEND if cfg.compile else None),
            micro_batch_size=self.memory_plan.micro_batch_size, memory=memory,
            n_evals=cfg.n_evals, n_checkpoints=cfg.n_checkpoints)
        self.plan = dataclasses.replace(
            plan, warmup_steps=cfg.planned_warmup_steps(plan.total_steps(len(self.rows))))
        self.state = LoopState()
        if resume_from is not None:
            saved = read_run_settings(Path(resume_from))
            if saved != self.run_settings():
                raise CheckpointError("checkpoint was written with different settings: "
                                      f"{settings_difference(saved, self.run_settings())}")
            self.state = load_checkpoint(Path(resume_from), model=self.built.model,
                                         crma=self.built.crma, optimizer=self.optimizer,
                                         clipper=self.clipper)
            self.best = WeightSnapshot.load(Path(resume_from))
            if self.best is None and self.state.best_step == self.state.step:
                self._keep_best(self.state)

    def _save_pissa_init(self) -> None:
        # The initial PiSSA adapter, needed to convert the trained one into a plain LoRA.
        model = self.built.model
        self._pissa_init = self._workdir / "pissa_init"
        config = model.peft_config["default"]
        config.init_lora_weights = True
        model.save_pretrained(str(self._pissa_init), safe_serialization=True)
        config.init_lora_weights = "pissa"

    def _require_setup(self) -> BuiltModel:
        if self.built is None:
            raise RuntimeError("call setup() first")
        return self.built

    # -- training ---------------------------------------------------------------------------
    def evaluate(self) -> float:
        """Validation loss of the current model (mean response-token cross-entropy)."""
        return self.evaluate_metrics().loss

    def evaluate_metrics(self) -> EvalResult:
        """Validation loss and mean token accuracy of the current model (whole file)."""
        if self.val_batches is None:
            raise ValueError("no validation file")
        return evaluate(self._require_setup().model, self.val_batches, self.plan.loss)

    def train(self) -> TrainResult:
        """Run until done, stopped or out of budget; see TrainResult.stop_reason.

        With a validation file, the final model is scored on all of it (``full_valid_*``),
        and, with CRMA, once more with CRMA off (what the LoRA alone gives in plain peft).
        """
        built = self._require_setup()
        crma_stats = built.crma.stats if built.crma is not None else None
        has_val = self.val_batches is not None
        started, started_cpu = time.perf_counter(), time.process_time()
        reason = train_loop(
            model=built.model, rows=self.rows, optimizer=self.optimizer, clipper=self.clipper,
            state=self.state, plan=self.plan, callbacks=self.callbacks, crma_stats=crma_stats,
            evaluate=self.evaluate_metrics if has_val else None,
            checkpoint=self._emit_checkpoint if self.callbacks.on_checkpoint else None,
            on_best=self._keep_best,
        )
        train_seconds = time.perf_counter() - started
        train_cpu_seconds = time.process_time() - started_cpu
        state = self.state
        if has_val and state.step and state.last_eval_step != state.step:
            run_evaluation(self.evaluate_metrics, state, self.callbacks, on_best=self._keep_best)
        lora_only = None
        if has_val and state.step and built.crma is not None:
            built.crma.enabled = False
            try:
                lora_only = self.evaluate()
            finally:
                built.crma.enabled = True
        self.result = TrainResult.of_state(
            state, stop_reason=reason, validated=has_val, lora_only=lora_only,
            train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds)
        state.history.append({"type": "summary", **self.result.summary()})
        return self.result

    def _keep_best(self, state: LoopState) -> None:
        built = self._require_setup()
        self.best = WeightSnapshot.take(built.model, built.crma, step=state.step)

    def checkpoint_metrics(self) -> CheckpointMetrics:
        """The current step's metrics under OpenAI's names (see CheckpointMetrics)."""
        return CheckpointMetrics.of_state(self.state,
                                          total_steps=self.plan.total_steps(len(self.rows)))

    def _emit_checkpoint(self, state: LoopState) -> None:
        directory = Path(tempfile.mkdtemp(prefix=f"crma-ckpt-{state.step}-"))
        try:
            # Recorded first, so the checkpoint's own history (and a run resumed from it)
            # has the record too.
            state.history.append({"type": "checkpoint", **self.checkpoint_metrics().to_dict()})
            self.save_checkpoint(directory)
            self.callbacks.on_checkpoint(state.step, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def save_checkpoint(self, directory: Path) -> Path:
        """Everything needed to resume bit-for-bit (safetensors + JSON only), plus the
        checkpoint's metrics (``checkpoint_metrics.json``) and the best weights so far."""
        built = self._require_setup()
        directory = save_checkpoint(Path(directory), model=built.model, crma=built.crma,
                                    optimizer=self.optimizer, clipper=self.clipper,
                                    state=self.state, run=self.run_settings())
        write_json(directory / CHECKPOINT_METRICS, self.checkpoint_metrics().to_dict())
        if self.best is not None and self.best.step != self.state.step:
            self.best.save(directory)  # else the checkpoint's own weights are the best
        return directory

    # -- output -----------------------------------------------------------------------------
    def export_artifacts(self, out_dir: Path) -> dict[str, Any]:
        """Write the adapter bundle (see crma_core.artifacts) and return its manifest."""
        built = self._require_setup()
        return export_bundle(Path(out_dir), model=built.model, crma=built.crma,
                             history=self.state.history, info=self._bundle_info(),
                             pissa_init_dir=self._pissa_init,
                             base_model_name=self.model_dir.name, best=self.best)

    def export_adapter(self, out_dir: Path) -> Path:
        """The current weights as a servable adapter in ``out_dir``: ``lora/`` (PEFT; a PiSSA
        LoRA converted to a plain one) and the CRMA files, as in a bundle but without its
        plots, metrics and best weights. Small; the worker stores one in every checkpoint
        (``serving/``) so that a checkpoint can be served. Changes nothing in training."""
        built = self._require_setup()
        write_adapter(Path(out_dir), model=built.model, crma=built.crma,
                      info=self._bundle_info(), pissa_init_dir=self._pissa_init,
                      base_model_name=self.model_dir.name)
        return Path(out_dir)

    def _bundle_info(self) -> dict[str, Any]:
        built = self._require_setup()
        result = self.result or TrainResult.of_state(self.state, stop_reason=None,
                                                     validated=False)
        return {
            "base_model": {"family": built.family, "dir_name": self.model_dir.name},
            "crma": self.crma_config.to_dict() if self.crma_config else None,
            "crma_parameters": built.crma.num_parameters() if built.crma else 0,
            "lora": self.lora.to_dict(),
            "train": self.train_config.to_dict(),
            "steps": self.state.step,
            "trained_tokens": self.state.trained_tokens,
            "final_train_loss": self.state.last_loss,
            "final_val_loss": self.state.last_val_loss,
            "peak_grad_norm": self.state.grad_norm_peak,
            "mean_grad_norm": self.state.mean_grad_norm,
            "stop_reason": result.stop_reason,
            "micro_batch_size": self.state.micro_batch_size,
            "metrics": result.summary(),
            "full_valid_loss": result.full_valid_loss,
            "full_valid_loss_lora_only": result.full_valid_loss_lora_only,
            "best": ({"step": self.best.step, "valid_loss": self.state.best_val_loss}
                     if self.best is not None else None),
        }

    def cleanup(self) -> None:
        """Unhook CRMA, drop the model and optimizer, delete temporary files."""
        if self.built is not None and self.built.crma is not None:
            self.built.crma.remove()
        self.built = None
        self.optimizer = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
