"""Attach CRMA to every decoder layer of a transformers causal LM (Llama, Mistral, Gemma-2).

The adapter lives outside the transformers module tree (it is not a registered submodule),
so peft's adapter bookkeeping, ``save_pretrained`` and ``model.parameters()`` never see it;
forward hooks wire it in. One pre-hook on the decoder stack computes every layer's mixing
matrix with a single batched Sinkhorn per forward pass.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from crma_core.config import CRMAConfig
from crma_core.errors import CheckpointError, ConfigError
from crma_core.layer import CRMALayer, apply_adapter, gate, mixed_writes, mixing_matrices
from crma_core.mixing import marginal_error

_HANDLE_ATTR = "_crma_handle"


def find_decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (the module holding ``.layers``) of a causal LM or a PeftModel."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    candidates = [base.get_decoder()] if hasattr(base, "get_decoder") else []
    candidates += list(base.modules())
    for module in candidates:
        if isinstance(getattr(module, "layers", None), nn.ModuleList):
            return module
    raise ConfigError(f"no decoder layer stack found in {type(base).__name__}")


def get_crma(model: nn.Module) -> CRMAHandle | None:
    """The CRMA handle attached to ``model``, or None."""
    return getattr(find_decoder(model), _HANDLE_ATTR, None)


def attach_crma(model: nn.Module, config: CRMAConfig | None = None, *,
                seed: int | None = None) -> CRMAHandle:
    """Create a CRMA adapter for every decoder layer of ``model`` and hook it in.

    Works on a plain transformers model or a PeftModel wrapping one. Parameters are float32
    on the decoder's device; ``seed`` fixes the orthonormal read init (else the global RNG).
    At init (default config) the model's outputs are bitwise unchanged.
    """
    config = config or CRMAConfig()
    decoder = find_decoder(model)
    if getattr(decoder, _HANDLE_ATTR, None) is not None:
        raise ConfigError("this model already has CRMA attached; remove() it first")
    hidden = _hidden_size(model, decoder)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    handle = CRMAHandle(config, hidden_size=hidden, num_layers=len(decoder.layers),
                        generator=generator)
    handle.to(next(decoder.parameters()).device)
    handle.attach(decoder)
    return handle


def _hidden_size(model: nn.Module, decoder: nn.Module) -> int:
    config = getattr(decoder, "config", None) or getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None)
    if hidden is None and hasattr(config, "get_text_config"):
        hidden = config.get_text_config().hidden_size
    if hidden is None:
        raise ConfigError("cannot read hidden_size from the model config")
    return int(hidden)


class CRMAHandle(nn.Module):
    """All layers' CRMA adapters plus the hooks that apply them.

    ``state_dict()`` keys: ``layers.{i}.read`` (d×K), ``layers.{i}.write`` (K×d),
    ``layers.{i}.log_mix`` (n×n), ``layers.{i}._log_alpha`` (scalar).
    """

    def __init__(self, config: CRMAConfig, *, hidden_size: int, num_layers: int,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(
            CRMALayer(hidden_size, config, generator=generator) for _ in range(num_layers)
        )
        self._enabled = True
        self._hooks: list[Any] = []
        # A weak reference: assigning a Module attribute would register the whole base
        # model as a submodule of the handle.
        self._decoder_ref: weakref.ref | None = None
        self._wm: torch.Tensor | None = None  # L×K×d, set once per forward pass
        self._cache: tuple | None = None  # (parameter versions, wm) for no-grad passes
        self._last_m: torch.Tensor | None = None  # M of the latest forward pass
        # The two per-forward computations, swappable for compiled versions of the same
        # functions (crma_core.compile.compile_for_training).
        self.adapter_fn = apply_adapter
        self.mixing_fn = mixing_matrices

    # -- toggle ---------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Whether the adapter is applied; when False every layer passes h through exactly."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)

    # -- hooks ----------------------------------------------------------------------------
    def attach(self, decoder: nn.Module) -> None:
        if self._hooks:
            raise ConfigError("CRMA handle is already attached")
        self._hooks.append(decoder.register_forward_pre_hook(self._prepare_hook))
        for index, layer in enumerate(decoder.layers):
            if self.config.attach == "output":
                hook = layer.register_forward_hook(self._output_hook(index))
            else:
                hook = layer.register_forward_pre_hook(self._input_hook(index), with_kwargs=True)
            self._hooks.append(hook)
        object.__setattr__(decoder, _HANDLE_ATTR, self)
        self._decoder_ref = weakref.ref(decoder)

    def remove(self) -> None:
        """Unhook from the model (the model then computes exactly its own function)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        decoder = self._decoder_ref() if self._decoder_ref is not None else None
        if decoder is not None:
            object.__setattr__(decoder, _HANDLE_ATTR, None)
        self._decoder_ref = None
        self._wm = None

    def _prepare_hook(self, module: nn.Module, args: Any) -> None:
        self._wm = self._mixed_writes() if self._enabled else None

    def _output_hook(self, index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not self._enabled or self._wm is None:
                return output
            if isinstance(output, tuple):
                return (self._adapt(index, output[0]), *output[1:])
            return self._adapt(index, output)
        return hook

    def _input_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if not self._enabled or self._wm is None:
                return None
            if args:
                return (self._adapt(index, args[0]), *args[1:]), kwargs
            kwargs = dict(kwargs, hidden_states=self._adapt(index, kwargs["hidden_states"]))
            return args, kwargs
        return hook

    def _adapt(self, index: int, h: torch.Tensor) -> torch.Tensor:
        return self.adapter_fn(h, self.layers[index].read, self._wm[index])

    # -- the per-forward computation --------------------------------------------------------
    def _stacked(self, name: str) -> torch.Tensor:
        return torch.stack([getattr(layer, name) for layer in self.layers])

    def _mixed_writes(self) -> torch.Tensor:
        """L×K×d folded write weights: one batched Sinkhorn, one bmm, for all layers."""
        if torch.is_grad_enabled():
            self._cache = None
            return self._compute_mixed_writes()
        # Generation runs a forward pass per token: reuse the result while no parameter
        # changed (in-place updates bump _version; moves change data_ptr).
        key = tuple((p._version, p.data_ptr()) for p in self.parameters())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._compute_mixed_writes())
        return self._cache[1]

    def _compute_mixed_writes(self) -> torch.Tensor:
        m = self.mixing_fn(self._stacked("log_mix"), self.config)
        self._last_m = m.detach()
        return mixed_writes(m, self._stacked("write"), self._stacked("_log_alpha"), self.config)

    # -- inspection ----------------------------------------------------------------------------
    def mixing_matrices(self) -> torch.Tensor:
        """(L×n×n) float32 mixing matrices exactly as the forward pass uses them (no grad)."""
        with torch.no_grad():
            return mixing_matrices(self._stacked("log_mix"), self.config)

    def alphas(self) -> torch.Tensor:
        """(L,) float32 gates α = exp(a)."""
        with torch.no_grad():
            return torch.stack([layer.alpha() for layer in self.layers])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"rw": reads and writes, "mix": log_mix, "gate": _log_alpha} (optimizer groups)."""
        return {
            "rw": [p for layer in self.layers for p in (layer.read, layer.write)],
            "mix": [layer.log_mix for layer in self.layers],
            "gate": [layer._log_alpha for layer in self.layers],
        }

    def stats(self, *, last_forward: bool = True) -> dict[str, Any]:
        """Per-layer ‖M‖₂, max row/column error of M and α, plus their extremes (floats).

        Measured on the M of the latest forward pass (the one the step's loss used) unless
        ``last_forward`` is False or no forward ran yet; then on M from the current Λ.
        """
        m = self._last_m if last_forward and self._last_m is not None else self.mixing_matrices()
        # L×n×n and L numbers: on the CPU, the SVD and the reductions cost microseconds
        # instead of a few dozen kernel launches, a batched GPU SVD and five syncs per step.
        m = m.detach().to("cpu", torch.float64)
        spectral = torch.linalg.matrix_norm(m, ord=2)
        errors = marginal_error(m)
        with torch.no_grad():
            alphas = gate(self._stacked("_log_alpha").cpu(), self.config)
        return {
            "spectral_norm": spectral.tolist(),
            "marginal_error": errors.tolist(),
            "alpha": alphas.tolist(),
            "max_marginal_error": float(errors.max()),
            "max_spectral_deviation": float((spectral - 1).abs().max()),
        }

    # -- persistence -----------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True,
                        assign: bool = False):
        """Load weights; a shape mismatch (other n, r, d or layer count) raises CheckpointError."""
        own = super().state_dict()
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if strict and (missing or unexpected):
            raise CheckpointError(
                f"CRMA state does not match this model: missing {missing[:4]}, "
                f"unexpected {unexpected[:4]}")
        for key, tensor in state_dict.items():
            if key in own and own[key].shape != tensor.shape:
                raise CheckpointError(
                    f"CRMA tensor {key} has shape {tuple(tensor.shape)}, this model needs "
                    f"{tuple(own[key].shape)} (different n, r or hidden size?)")
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._cache = None
        self._last_m = None
        return result
