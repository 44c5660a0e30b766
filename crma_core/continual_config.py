"""A continual run's settings (no torch: the API's settings code builds them too).

``ContinualConfig`` is what every stage of a run shares; ``crma_core.continual_state`` keeps
it in the state directory and ``crma_core.continual`` trains with it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crma_core.config import CRMAConfig
from crma_core.errors import ConfigError
from crma_core.settings import LoraSettings, TrainConfig

MODES = ("modular", "frozen", "naive")
DEFAULT_DRIFT_BUDGET_PCT = 0.5
# The general-text holdout shipped with the package (real text of no domain, for the
# general-retention figures; provenance and licence next to it in general_text/).
GENERAL_HOLDOUT_FILE = Path(__file__).resolve().parent / "general_text" / "holdout.jsonl"
# Train settings that do not change what a stage computes (unless a budget binds), so a
# later stage may pass other values than the run was started with.
STAGE_MAY_CHANGE = ("device", "eval_batch_size", "eval_every", "checkpoint_every_steps",
                    "checkpoint_every_seconds", "token_budget")


@dataclass(frozen=True)
class ContinualConfig:
    """A continual run's settings, fixed when its first domain starts.

    mode: "modular" (fresh LoRA per domain + one shared CRMA trained throughout), "frozen"
    (fresh LoRA per domain, no CRMA in the forward pass) or "naive" (one LoRA trained
    through every domain, no CRMA). ``crma`` is used in modular mode only. ``train`` holds
    the per-domain training knobs; its ``seed`` is the run's seed. LoRA uses standard
    initialisation (PiSSA would rewrite the shared base per adapter). ``score_base`` also
    scores each new domain's holdout with the untrained base model (one more pass).

    ``drift_budget_pct`` (modular): no earlier domain is served with a CRMA state whose
    holdout loss is more than this many percent above the loss its own stage ended with
    (``crma_core.serving``; 0 allowed). Frozen drift is 0 by construction; naive mode shows
    forgetting on purpose and has no budget. ``baseline`` (modular, naive): every stage
    also trains a plain per-domain LoRA (what frozen mode trains: same init and batches,
    no CRMA), so the report compares the mode with frozen within the run; its tokens are
    counted apart (``StageResult.baseline_trained_tokens``).
    """

    mode: str = "modular"
    lora: LoraSettings = LoraSettings()
    crma: CRMAConfig = CRMAConfig()
    train: TrainConfig = TrainConfig()
    score_base: bool = True
    drift_budget_pct: float = DEFAULT_DRIFT_BUDGET_PCT
    baseline: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.lora.init != "default":
            raise ConfigError("continual runs use standard LoRA init (PiSSA would rewrite the "
                              "shared base model per adapter)")
        budget = self.drift_budget_pct
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
                or not math.isfinite(budget) or budget < 0:
            raise ConfigError(f"drift_budget_pct must be a number >= 0, got {budget!r}")
        if self.baseline and self.mode == "frozen":
            raise ConfigError("baseline: frozen mode is the per-domain LoRA baseline itself")

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def uses_crma(self) -> bool:
        return self.mode == "modular"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "lora": self.lora.to_dict(),
                "crma": self.crma.to_dict() if self.uses_crma else None,
                "train": self.train.to_dict(), "score_base": self.score_base,
                "drift_budget_pct": self.drift_budget_pct, "baseline": self.baseline}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContinualConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown ContinualConfig fields: {', '.join(unknown)}")
        return cls(mode=data["mode"], lora=LoraSettings.from_dict(data["lora"]),
                   crma=CRMAConfig.from_dict(data["crma"]) if data.get("crma") else CRMAConfig(),
                   train=TrainConfig.from_dict(data["train"]),
                   score_base=bool(data.get("score_base", True)),
                   drift_budget_pct=data.get("drift_budget_pct", DEFAULT_DRIFT_BUDGET_PCT),
                   baseline=bool(data.get("baseline", False)))

    def fixed_part(self) -> dict[str, Any]:
        """The settings every stage of a run must share."""
        data = self.to_dict()
        data["train"] = {k: v for k, v in data["train"].items() if k not in STAGE_MAY_CHANGE}
        return data
