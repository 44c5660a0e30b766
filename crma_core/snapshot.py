"""A CPU copy of an adapter's trainable weights (LoRA + CRMA): the best checkpoint's.

The recipe copies the weights after every evaluation that sets a new lowest validation
loss, keeps the copy in its checkpoints (``best.safetensors``) so a resumed run still has
it, and exports it as the bundle's ``best/`` adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from crma_core.io import load_tensors, save_tensors
from crma_core.model import CRMAHandle

BEST_WEIGHTS = "best.safetensors"
_LORA, _CRMA = "lora.", "crma."


@dataclass
class WeightSnapshot:
    """Trainable model parameters (by name) and CRMA state at optimizer step ``step``."""

    step: int
    tensors: dict[str, torch.Tensor]

    @classmethod
    def take(cls, model: nn.Module, crma: CRMAHandle | None, *, step: int) -> WeightSnapshot:
        tensors = {_LORA + name: p.detach().to("cpu", copy=True)
                   for name, p in model.named_parameters() if p.requires_grad}
        if crma is not None:
            tensors.update({_CRMA + k: v.detach().to("cpu", copy=True)
                            for k, v in crma.state_dict().items()})
        return cls(step=step, tensors=tensors)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / BEST_WEIGHTS
        save_tensors(path, {**self.tensors, "step": torch.tensor(self.step)})
        return path

    @classmethod
    def load(cls, directory: Path) -> WeightSnapshot | None:
        path = Path(directory) / BEST_WEIGHTS
        if not path.is_file():
            return None
        tensors = load_tensors(path)
        return cls(step=int(tensors.pop("step")), tensors=tensors)

    def restore(self, model: nn.Module, crma: CRMAHandle | None) -> None:
        """Copy the snapshot into the live parameters (same names and shapes)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, value in self.tensors.items():
                if key.startswith(_LORA):
                    param = params[key[len(_LORA):]]
                    param.copy_(value.to(param.device))
        if crma is not None:
            crma.load_state_dict({k[len(_CRMA):]: v for k, v in self.tensors.items()
                                  if k.startswith(_CRMA)})


@contextmanager
def swapped_in(snapshot: WeightSnapshot, model: nn.Module,
               crma: CRMAHandle | None) -> Iterator[None]:
    """Run the block with the snapshot's weights in the model, then put the current back."""
    current = WeightSnapshot.take(model, crma, step=-1)
    snapshot.restore(model, crma)
    try:
        yield
    finally:
        current.restore(model, crma)
