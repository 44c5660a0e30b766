"""CRMAConfig: every CRMA design choice as a validated field (see docs/crma.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from crma_core.errors import ConfigError

INITS = ("identity", "near_identity")
ATTACH_POINTS = ("output", "input")
SINKHORN_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class CRMAConfig:
    """Shape and numerics of the CRMA adapter.

    n streams of rank r each (K = n·r read/write width); ``sinkhorn_iters`` log-domain
    iterations at temperature ``tau``, then more (up to ``sinkhorn_max_iters``) while the
    row-sum error exceeds ``sinkhorn_tol`` (None disables the early-exit check);
    ``mix_init`` κ gives Λ = κ·I; ``init="identity"`` starts with W = 0 (exact identity),
    ``"near_identity"`` with W ~ N(0, near_identity_std²); ``attach`` is the output of every
    decoder layer (default) or its input; ``alpha_max`` optionally clamps the gate.
    """

    n: int = 4
    r: int = 1
    sinkhorn_iters: int = 20
    sinkhorn_tol: float | None = 1e-9
    sinkhorn_max_iters: int = 1000
    sinkhorn_dtype: str = "float64"
    tau: float = 1.0
    mix_init: float = 3.0
    init: str = "identity"
    near_identity_std: float = 1e-3
    attach: str = "output"
    alpha_max: float | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.r < 1:
            raise ConfigError(f"n and r must be >= 1, got n={self.n}, r={self.r}")
        if self.sinkhorn_iters < 1 or self.sinkhorn_max_iters < self.sinkhorn_iters:
            raise ConfigError("need 1 <= sinkhorn_iters <= sinkhorn_max_iters")
        if self.sinkhorn_tol is not None and self.sinkhorn_tol <= 0:
            raise ConfigError("sinkhorn_tol must be positive or None")
        if self.sinkhorn_dtype not in SINKHORN_DTYPES:
            # bf16/fp16 would break the row/column sums at the 1e-3 level.
            raise ConfigError(f"sinkhorn_dtype must be one of {SINKHORN_DTYPES}")
        if self.tau <= 0:
            raise ConfigError("tau must be positive")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {self.init!r}")
        if self.attach not in ATTACH_POINTS:
            raise ConfigError(f"attach must be one of {ATTACH_POINTS}, got {self.attach!r}")
        if self.alpha_max is not None and self.alpha_max <= 0:
            raise ConfigError("alpha_max must be positive or None")

    @property
    def width(self) -> int:
        """K = n·r, the read/write width."""
        return self.n * self.r

    def num_parameters(self, hidden_size: int, num_layers: int) -> int:
        """L·(2·d·K + n² + 1)."""
        return num_layers * (2 * hidden_size * self.width + self.n * self.n + 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CRMAConfig:
        """Build from a dict, rejecting unknown keys (a typo must not pass silently)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown CRMAConfig fields: {', '.join(unknown)}")
        return cls(**data)
