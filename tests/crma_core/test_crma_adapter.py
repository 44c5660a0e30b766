"""T4–T8, T10, T11: the adapter on tiny Llama, Mistral and Gemma-2 models."""

import pytest
import torch

from crma_core import CRMAConfig, attach_crma
from crma_core.catalog import get_model
from crma_core.config import CRMAConfig as _Config
from crma_core.errors import CheckpointError, ConfigError
from crma_core.layer import CRMALayer
from crma_core.model import find_decoder, get_crma
from crma_core.testing import make_tiny_model

FAMILIES = ("llama", "mistral", "gemma2")
LAYERS = 4


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def _batch(seed=0, batch=2, length=12):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 384, (batch, length), generator=generator)


def _hidden_states(model, ids):
    """Hidden state after every decoder layer (before the final norm), via hooks."""
    captured = []
    hooks = [layer.register_forward_hook(lambda m, a, out: captured.append(
        (out[0] if isinstance(out, tuple) else out).detach().clone()))
        for layer in find_decoder(model).layers]
    # Registered after CRMA's hooks, so these see the adapted output.
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return captured


def _randomize_write(handle, std=0.02, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in handle.layers:
            layer.write.copy_(torch.randn(layer.write.shape, generator=generator) * std)


# -- T4: identity at init ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_t4_single_adapter_is_bitwise_identity(dtype):
    layer = CRMALayer(64, CRMAConfig())
    h = torch.randn(2, 5, 64).to(dtype)
    assert torch.equal(layer(h), h)
    assert layer(h).dtype == dtype


def test_t4_model_logits_unchanged_at_init(family):
    model = make_tiny_model(family, num_layers=LAYERS)
    ids = _batch()
    with torch.no_grad():
        base = model(ids).logits
    handle = attach_crma(model, CRMAConfig(), seed=0)
    with torch.no_grad():
        adapted = model(ids).logits
    assert torch.equal(base, adapted)
    assert handle.mixing_matrices().shape == (LAYERS, 4, 4)


def test_t4_bf16_model_unchanged_at_init(family):
    model = make_tiny_model(family, num_layers=2).to(torch.bfloat16)
    ids = _batch()
    with torch.no_grad():
        base = model(ids).logits
    attach_crma(model, CRMAConfig())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)


def test_t4_near_identity_init_is_close(family):
    model = make_tiny_model(family, num_layers=LAYERS)
    ids = _batch()
    base_states = _hidden_states(model, ids)
    handle = attach_crma(model, CRMAConfig(init="near_identity"), seed=0)
    assert all(float(layer.write.detach().abs().max()) > 0 for layer in handle.layers)
    for layer, h in zip(handle.layers, base_states):
        with torch.no_grad():
            out = layer(h)
        assert float((out - h).norm() / h.norm()) <= 1e-2


# -- T5: depth compounding -----------------------------------------------------------------------
@pytest.mark.parametrize("init,tol", [("identity", 1e-6), ("near_identity", 5e-2)])
def test_t5_gain_through_all_layers(family, init, tol):
    model = make_tiny_model(family, num_layers=LAYERS)
    ids = _batch()
    base = _hidden_states(model, ids)
    handle = attach_crma(model, CRMAConfig(init=init), seed=0)
    adapted = _hidden_states(model, ids)
    final_gain = float(adapted[-1].norm() / base[-1].norm())
    assert abs(final_gain - 1) <= tol
    for layer, h in zip(handle.layers, base):  # each adapter's own gain on its input
        with torch.no_grad():
            gain = float(layer(h).norm() / h.norm())
        assert abs(gain - 1) <= (1e-6 if init == "identity" else 1e-2)


def test_t5_catches_a_shrinking_adapter():
    """The depth test would fail for the reported bug: a 0.966 gain per layer over 32 layers."""
    assert 0.966 ** 32 < 0.34
    model = make_tiny_model("llama", num_layers=LAYERS)
    ids = _batch()
    base = _hidden_states(model, ids)
    handle = attach_crma(model, CRMAConfig())
    with torch.no_grad():  # make every adapter subtract 3.4% of h along its read subspace
        for layer in handle.layers:
            layer.write.copy_(-0.034 * layer.read.T * 64 ** 0.5)
    adapted = _hidden_states(model, ids)
    assert abs(float(adapted[-1].norm() / base[-1].norm()) - 1) > 1e-6


# -- T6: gradient flow -----------------------------------------------------------------------------
def _loss(model, ids):
    logits = model(ids).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def test_t6_gradients_at_init_and_after(family):
    model = make_tiny_model(family, num_layers=2)
    for p in model.parameters():
        p.requires_grad_(False)
    handle = attach_crma(model, CRMAConfig(), seed=0)
    ids = _batch()
    _loss(model, ids).backward()
    for layer in handle.layers:
        assert layer.write.grad is not None and torch.isfinite(layer.write.grad).all()
        assert float(layer.write.grad.abs().max()) > 0
        for name in ("read", "log_mix", "_log_alpha"):
            grad = getattr(layer, name).grad
            assert grad is None or float(grad.abs().max()) == 0.0, name
    assert all(p.grad is None for p in model.parameters())  # (d) base gets nothing
    handle.zero_grad()
    _randomize_write(handle)
    _loss(model, ids).backward()
    for layer in handle.layers:
        for name in ("read", "write", "log_mix", "_log_alpha"):
            grad = getattr(layer, name).grad
            assert grad is not None and torch.isfinite(grad).all(), name
            assert float(grad.abs().max()) > 0, name
    assert all(p.grad is None for p in model.parameters())


# -- T7: gate and toggle ------------------------------------------------------------------------------
def test_t7_gate_positive_and_toggle(family):
    model = make_tiny_model(family, num_layers=2)
    ids = _batch()
    with torch.no_grad():
        base = model(ids).logits
    handle = attach_crma(model, CRMAConfig(), seed=0)
    with torch.no_grad():
        for layer in handle.layers:
            layer._log_alpha.fill_(-3.0)
    assert (handle.alphas() > 0).all()
    model.eval()
    with torch.no_grad():  # W = 0: toggling changes nothing
        on = model(ids).logits
        handle.enabled = False
        off = model(ids).logits
        handle.enabled = True
    assert torch.equal(on, off) and torch.equal(on, base)
    _randomize_write(handle)
    with torch.no_grad():  # W != 0: toggling changes the logits, and off is exactly base
        on = model(ids).logits
        handle.enabled = False
        off = model(ids).logits
    assert not torch.equal(on, off)
    assert torch.equal(off, base)
    handle.remove()
    assert get_crma(model) is None
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)


def test_alpha_max_clamps_gate():
    layer = CRMALayer(8, CRMAConfig(alpha_max=2.0))
    with torch.no_grad():
        layer._log_alpha.fill_(5.0)
    assert abs(float(layer.alpha().detach()) - 2.0) < 1e-6


# -- T8: parameter count ----------------------------------------------------------------------------------
def test_t8_parameter_count_formula():
    config = CRMAConfig()
    assert config.num_parameters(4096, 32) == 1_049_120
    assert config.num_parameters(2048, 22) == 360_822
    assert get_model("mistral-7b-v0.3").crma_parameters() == 1_049_120


def test_t8_parameter_count_on_meta_device():
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    shapes = {
        1_049_120: MistralConfig(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                                 num_attention_heads=32, num_key_value_heads=8,
                                 vocab_size=32768),
        360_822: LlamaConfig(hidden_size=2048, num_hidden_layers=22, intermediate_size=5632,
                             num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
    }
    for expected, config in shapes.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
            handle = attach_crma(model, CRMAConfig())
        assert handle.num_parameters() == expected
        assert next(handle.parameters()).device.type == "meta"


def test_t8_tiny_model_count(family):
    model = make_tiny_model(family, num_layers=LAYERS)
    handle = attach_crma(model, CRMAConfig(n=4, r=2))
    assert handle.num_parameters() == LAYERS * (2 * 64 * 8 + 16 + 1)


# -- T10: dtype policy ---------------------------------------------------------------------------------------
def test_t10_bf16_model_keeps_mixing_in_fp32(family):
    model = make_tiny_model(family, num_layers=2).to(torch.bfloat16)
    handle = attach_crma(model, CRMAConfig(), seed=0)
    _randomize_write(handle)
    with torch.no_grad():
        for layer in handle.layers:
            layer.log_mix.add_(torch.randn(4, 4))
    m = handle.mixing_matrices()
    assert m.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in handle.parameters())
    assert float((m.sum(-1) - 1).abs().max()) <= 1e-6
    assert float((m.sum(-2) - 1).abs().max()) <= 1e-6
    captured = []
    original = handle._compute_mixed_writes

    def spy():
        wm = original()
        captured.append(wm)
        return wm

    handle._compute_mixed_writes = spy
    with torch.no_grad():
        out = model(_batch()).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert captured and captured[0].dtype == torch.float32


def test_one_batched_sinkhorn_per_forward(monkeypatch):
    import crma_core.layer as layer_module

    calls = []
    original = layer_module.sinkhorn
    monkeypatch.setattr(layer_module, "sinkhorn",
                        lambda logits, *a, **k: calls.append(logits.shape) or original(logits, *a, **k))
    model = make_tiny_model("llama", num_layers=LAYERS)
    attach_crma(model, CRMAConfig())
    model(_batch()).logits.sum().backward()
    assert calls == [(LAYERS, 4, 4)]


def test_general_rank_mixing_matches_einsum():
    config = CRMAConfig(n=3, r=2)
    layer = CRMALayer(16, config)
    with torch.no_grad():
        layer.write.normal_()
        layer.log_mix.normal_()
        layer._log_alpha.fill_(0.3)
    h = torch.randn(2, 5, 16)
    z = (h @ layer.read).view(2, 5, 3, 2)
    m = layer.mixing_matrix()
    mixed = torch.einsum("ij,btjr->btir", m, z).reshape(2, 5, 6)
    expected = h + torch.exp(torch.tensor(0.3)) * (mixed @ layer.write)
    torch.testing.assert_close(layer(h), expected, rtol=1e-5, atol=1e-5)


def test_attach_at_layer_input(family):
    model = make_tiny_model(family, num_layers=2)
    ids = _batch()
    with torch.no_grad():
        base = model(ids).logits
    handle = attach_crma(model, CRMAConfig(attach="input"))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)
    _randomize_write(handle)
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, base)


def test_attach_twice_is_refused():
    model = make_tiny_model("llama", num_layers=2)
    attach_crma(model)
    with pytest.raises(ConfigError):
        attach_crma(model)


def test_config_validation_and_round_trip():
    config = CRMAConfig(n=3, r=2, tau=0.5)
    assert _Config.from_dict(config.to_dict()) == config
    for bad in ({"n": 0}, {"sinkhorn_dtype": "bfloat16"}, {"init": "zeros"}, {"tau": 0}):
        with pytest.raises(ConfigError):
            CRMAConfig(**bad)
    with pytest.raises(ConfigError):
        _Config.from_dict({"n": 4, "streams": 2})


# -- T11: save / load --------------------------------------------------------------------------------------------
def test_t11_round_trip(family, tmp_path):
    from crma_core.io import load_crma, read_crma_config, save_crma

    model = make_tiny_model(family, num_layers=LAYERS)
    handle = attach_crma(model, CRMAConfig(), seed=0)
    _randomize_write(handle)
    with torch.no_grad():
        for layer in handle.layers:
            layer.log_mix.add_(0.1 * torch.randn(4, 4))
            layer._log_alpha.fill_(0.2)
    ids = _batch()
    with torch.no_grad():
        expected = model(ids).logits
    save_crma(handle, tmp_path)
    keys = set(handle.state_dict())
    assert {f"layers.{i}.{n}" for i in range(LAYERS)
            for n in ("read", "write", "log_mix", "_log_alpha")} == keys
    config, meta = read_crma_config(tmp_path)
    assert config == handle.config and meta["num_layers"] == LAYERS
    assert {"n", "r", "sinkhorn_iters", "tau", "attach", "init"} <= set(meta["config"])

    fresh = make_tiny_model(family, num_layers=LAYERS)
    loaded = load_crma(fresh, tmp_path)
    for key, tensor in handle.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, expected)


def test_t11_mismatch_raises(tmp_path):
    from crma_core.io import load_crma, save_crma

    model = make_tiny_model("llama", num_layers=2)
    save_crma(attach_crma(model, CRMAConfig(n=4)), tmp_path)
    wider = make_tiny_model("llama", num_layers=2, hidden_size=128)
    with pytest.raises(CheckpointError):
        load_crma(wider, tmp_path)
    assert get_crma(wider) is None
    other_n = attach_crma(make_tiny_model("llama", num_layers=2), CRMAConfig(n=3))
    with pytest.raises(CheckpointError):
        other_n.load_state_dict(attach_crma(make_tiny_model("llama", num_layers=2)).state_dict())
