"""T14: ZClip; plus the plain max-norm clip."""

import math

import pytest
import torch

from crma_core.clipping import MaxNormClip, ZClip, grad_norm, make_clipper


def _params_with_grad(norm: float) -> list[torch.nn.Parameter]:
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.tensor([3.0, 0.0, 0.0]) * norm / 5
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0]) * norm / 5
    return [a, b]


def test_warmup_uses_only_max_norm():
    clip = ZClip(max_grad_norm=1.0, warmup_steps=25)
    for step in range(25):
        params = _params_with_grad(3.0 if step % 2 else 0.5)
        norm, clipped = clip.clip(params)
        assert abs(norm - (3.0 if step % 2 else 0.5)) < 1e-6
        assert clipped == (step % 2 == 1)
        assert abs(grad_norm(params) - min(norm, 1.0)) < 1e-5
    assert clip.mean is not None and clip.buffer == []


def test_constant_norm_never_clips_after_warmup():
    clip = ZClip(max_grad_norm=10.0)
    results = [clip.observe(2.0) for _ in range(200)]
    assert not any(clipped for _, clipped in results[25:])
    assert clip.mean == pytest.approx(2.0) and clip.var == pytest.approx(0.0)


def test_spike_rescaled_to_adaptive_threshold_and_ema_uses_clipped_value():
    clip = ZClip(max_grad_norm=100.0, alpha=0.97, z_thresh=2.5)
    norms = [1.0 + 0.1 * math.sin(i) for i in range(25)]
    for g in norms:
        clip.observe(g)
    mean, var = clip.mean, clip.var
    std = math.sqrt(var)
    spike = 50.0
    z = (spike - mean) / (std + 1e-6)
    assert z > 2.5
    expected = mean + 2.5 * std / (z / 2.5)
    target, clipped = clip.observe(spike)
    assert clipped and target == pytest.approx(expected, rel=1e-9)
    assert clip.mean == pytest.approx(0.97 * mean + 0.03 * expected)
    assert clip.var == pytest.approx(0.97 * var + 0.03 * (expected - clip.mean) ** 2)


def test_spike_threshold_capped_by_max_grad_norm_and_grads_scaled():
    clip = ZClip(max_grad_norm=1.05)
    for i in range(25):
        clip.observe(1.0 + 0.1 * math.cos(i))
    expected = min(clip.threshold(40.0), 1.05)
    params = _params_with_grad(40.0)
    norm, clipped = clip.clip(params)
    assert norm == pytest.approx(40.0) and clipped
    assert grad_norm(params) == pytest.approx(expected, rel=1e-4)


def test_state_round_trip():
    clip = ZClip()
    for i in range(30):
        clip.observe(1.0 + i / 100)
    other = ZClip()
    other.load_state_dict(clip.state_dict())
    assert other.state_dict() == clip.state_dict()
    assert other.observe(5.0) == clip.observe(5.0)


def test_non_finite_norm_does_not_poison_statistics():
    clip = ZClip()
    for _ in range(30):
        clip.observe(1.0)
    before = (clip.mean, clip.var)
    clip.observe(float("nan"))
    assert (clip.mean, clip.var) == before


def test_max_norm_clip():
    clip = MaxNormClip(1.0)
    params = _params_with_grad(5.0)
    norm, clipped = clip.clip(params)
    assert norm == pytest.approx(5.0) and clipped
    assert grad_norm(params) == pytest.approx(1.0, rel=1e-5)
    params = _params_with_grad(0.5)
    assert clip.clip(params) == (pytest.approx(0.5), False)


def test_make_clipper():
    assert isinstance(make_clipper("zclip", 1.0), ZClip)
    assert isinstance(make_clipper("max_norm", 1.0), MaxNormClip)
    with pytest.raises(ValueError):
        make_clipper("value", 1.0)
