"""CRMA residuals on top of a standard transformers causal LM: the ``modeling_crma.py`` that a
``merged_crma`` export ships (crma_core.export copies this file into the folder).

The folder's weights are the base model with the LoRA merged in. CRMA cannot be folded into
those weights (docs/user-guide.md, "Exporting merged weights"), so this file puts it back on
top: for every decoder layer i, on the layer's output (``crma_attach == "output"``, the
default) or its input, ``h ← h + ((h·R_i)·Wm_i)`` in float32, where R_i (d×K) is the
layer's read projection and Wm_i (K×d) its write projection with the Sinkhorn mixing matrix
and the gate already folded in (exactly what crma_core computes on every forward pass).

Load it with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``; the
folder's ``model_type`` (``crma_<base type>``) is unknown to plain transformers, so loading
it without ``trust_remote_code`` fails instead of silently dropping CRMA. The file needs
only torch and transformers: never crma_core.
"""

import torch
from torch import nn
from transformers import LlamaConfig as BaseConfig, LlamaForCausalLM as BaseForCausalLM  # crma:base


class CRMAResidualConfig(BaseConfig):
    """The base architecture's config plus ``crma_width`` (K) and ``crma_attach``."""

    model_type = "crma_" + BaseConfig.model_type


class CRMAResiduals(nn.Module):
    """read (L×d×K) and folded write (L×K×d), float32, frozen."""

    def __init__(self, num_layers, hidden_size, width):
        super().__init__()
        self.read = nn.Parameter(torch.zeros(num_layers, hidden_size, width),
                                 requires_grad=False)
        self.write = nn.Parameter(torch.zeros(num_layers, width, hidden_size),
                                  requires_grad=False)

    def residual(self, index, h):
        """h (…×d) → h + ((h·R)·Wm), summed in float32, cast back to h's dtype once."""
        read = self.read[index].to(h.device, torch.float32)
        write = self.write[index].to(h.device, torch.float32)
        shape = h.shape
        flat = h.reshape(-1, shape[-1])
        if h.dtype == torch.float32:
            return torch.addmm(flat, flat @ read, write).view(shape)
        return (flat + ((flat.to(torch.float32) @ read) @ write).to(h.dtype)).view(shape)


class CRMAForCausalLM(BaseForCausalLM):
    """The base causal LM with a CRMA residual on every decoder layer (hooks)."""

    config_class = CRMAResidualConfig
    # Loading in bfloat16/float16 keeps these in float32 (the residual is summed in float32).
    _keep_in_fp32_modules_strict = ["crma"]

    def __init__(self, config):
        super().__init__(config)
        layers = self.get_decoder().layers
        self.crma = CRMAResiduals(len(layers), config.hidden_size, config.crma_width)
        attach = getattr(config, "crma_attach", "output")
        if attach not in ("output", "input"):
            raise ValueError(f"crma_attach must be 'output' or 'input', got {attach!r}")
        for index, layer in enumerate(layers):
            if attach == "output":
                layer.register_forward_hook(self._output_hook(index))
            else:
                layer.register_forward_pre_hook(self._input_hook(index), with_kwargs=True)

    def _output_hook(self, index):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (self.crma.residual(index, output[0]), *output[1:])
            return self.crma.residual(index, output)
        return hook

    def _input_hook(self, index):
        def hook(module, args, kwargs):
            if args:
                return (self.crma.residual(index, args[0]), *args[1:]), kwargs
            kwargs = dict(kwargs, hidden_states=self.crma.residual(index, kwargs["hidden_states"]))
            return args, kwargs
        return hook
