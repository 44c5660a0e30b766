"""A continual run's report and state directory (a mixin of
``crma_core.continual.ContinualRunner``, which owns the domains, the matrix, the serving
history, the CRMA snapshots and the model)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import torch

from crma_core.continual_state import (CRMA_DIR, GENERAL_HOLDOUT, HOLDOUTS_DIR, LORAS_DIR,
                                       OPTIMIZER_POLICY, REPORT_FILE, STATE_FILE, STATE_FORMAT,
                                       STATE_VERSION, base_model_identity, begin_state_dir,
                                       crma_state_dir, finish_state_dir, save_lora)
from crma_core.drift import continual_report
from crma_core.io import save_crma, write_json


class StageOutput:
    """``report``, ``state_dict`` and ``save_state`` of a run (see the module docstring)."""

    def report(self) -> dict[str, Any]:
        """``crma_core.drift.continual_report`` of the run so far."""
        general = None
        if self.general is not None:
            general = {"base_loss": self.general["base_loss"],
                       "served": [d.get("general_loss") for d in self.domains],
                       "baseline": [d["baseline"]["general_loss"] for d in self.domains]
                       if self.config.baseline else None}
        return continual_report(
            self.matrix, [d["name"] for d in self.domains],
            [d.get("base_loss") for d in self.domains] if self.config.score_base else None,
            serving=self.served or None, budget_pct=self.config.drift_budget_pct,
            baseline_losses=[d["baseline"]["loss"] for d in self.domains]
            if self.config.baseline else None,
            general=general)

    def state_dict(self) -> dict[str, Any]:
        """The JSON written as state.json."""
        last = len(self.domains) - 1
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "mode": self.config.mode,
                "seed": self.config.seed, "config": self.config.to_dict(),
                "base_model": base_model_identity(self.model_dir),
                "optimizer_policy": OPTIMIZER_POLICY, "domains": self.domains,
                "matrix": self.matrix, "served": self.served or None,
                "crma_states": sorted(k for k in self.snapshots if k != last) or None,
                "general": self.general}

    def save_state(self, directory: Path) -> Path:
        """Write the state directory (see crma_core.continual_state); must be new or empty."""
        if self._broken:
            raise RuntimeError(f"cannot save: {self._broken}")
        if not self.domains:
            raise RuntimeError("no domain trained yet")
        tmp = begin_state_dir(Path(directory))
        try:
            model = self.built.model
            adapters = [d["adapter"] for d in self.domains]
            adapters += [d["baseline"]["adapter"] for d in self.domains if d.get("baseline")]
            for adapter in dict.fromkeys(adapters):
                save_lora(model, adapter, tmp / LORAS_DIR / adapter,
                          base_model_name=self.model_dir.name)
            crma = self.built.crma
            if crma is not None:
                save_crma(crma, tmp / CRMA_DIR)
                for k in self.state_dict()["crma_states"] or []:
                    with self._crma_weights(self.snapshots[k]):
                        save_crma(crma, tmp / crma_state_dir(k))
            (tmp / HOLDOUTS_DIR).mkdir()
            centroids = [e["route_centroid"] for e in self.domains if e.get("route_centroid")]
            for relative in [e["holdout"] for e in self.domains] + centroids + (
                    [GENERAL_HOLDOUT] if self.general else []):
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self._workdir / relative, tmp / relative)
            write_json(tmp / REPORT_FILE, self.report())
            write_json(tmp / STATE_FILE, self.state_dict())
            return finish_state_dir(tmp, Path(directory))
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def _crma_weights(self, weights: dict[str, torch.Tensor]):
        """The CRMA handle holds ``weights`` inside the block, its own ones after."""
        crma = self.built.crma
        own = clone_crma(crma)
        crma.load_state_dict(weights)
        try:
            yield crma
        finally:
            crma.load_state_dict(own)


def clone_crma(crma) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in crma.state_dict().items()}
