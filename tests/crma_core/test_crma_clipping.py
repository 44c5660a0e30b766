"""T14: ZClip; plus the plain max-norm clip, and clipping per optimizer group."""

import json
import math

import pytest
import torch

from crma_core.clipping import (MaxNormClip, PerGroupClip, ZClip, grad_norm, make_clipper,
                                one_clipper)


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
    assert isinstance(make_clipper("zclip", 1.0), PerGroupClip)
    assert isinstance(one_clipper("zclip", 1.0), ZClip)
    assert isinstance(one_clipper("max_norm", 1.0), MaxNormClip)
    with pytest.raises(ValueError):
        make_clipper("value", 1.0)


def test_per_group_clip_holds_each_group_to_its_own_norm():
    """A large group (CRMA read/write) no longer sets the scale of a small one (the LoRA):
    each is clipped to max_grad_norm on its own norm; the logged norm is the global one."""
    lora, rw = _params_with_grad(0.5), _params_with_grad(6.0)
    norm, clipped = make_clipper("max_norm", 1.0).clip_groups([("main", lora), ("rw", rw)])
    assert clipped and norm == pytest.approx((0.5 ** 2 + 6.0 ** 2) ** 0.5)
    assert grad_norm(lora) == pytest.approx(0.5) and grad_norm(rw) == pytest.approx(1.0, rel=1e-5)
    # Under one global norm the LoRA would have been scaled down with the read/write group.
    lora, rw = _params_with_grad(0.5), _params_with_grad(6.0)
    MaxNormClip(1.0).clip_groups([("main", lora), ("rw", rw)])
    assert grad_norm(lora) < 0.1


def test_per_group_clip_with_one_group_is_the_global_clip():
    grouped, single = make_clipper("zclip", 1.0), ZClip(max_grad_norm=1.0)
    for scale in [0.5, 2.0, 0.7, 30.0, 0.9] * 8:
        a, b = _params_with_grad(scale), _params_with_grad(scale)
        assert grouped.clip_groups([("main", a)]) == single.clip(b)
        assert grad_norm(a) == grad_norm(b)


def test_per_group_clip_state_round_trip_and_global_checkpoints():
    clip = make_clipper("zclip", 1.0)
    for scale in (0.5, 3.0, 0.8):
        clip.clip_groups([("main", _params_with_grad(scale)), ("rw", _params_with_grad(5 * scale))])
    state = json.loads(json.dumps(clip.state_dict()))
    restored = make_clipper("zclip", 1.0)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    # A checkpoint written with one global ZClip: every group continues from its statistics.
    old = ZClip(max_grad_norm=1.0)
    for scale in (0.5, 3.0):
        old.clip(_params_with_grad(scale))
    resumed = make_clipper("zclip", 1.0)
    resumed.load_state_dict(old.state_dict())
    resumed.clip_groups([("main", _params_with_grad(0.5)), ("rw", _params_with_grad(0.5))])
    groups = resumed.state_dict()["groups"]
    assert groups["main"]["step_count"] == groups["rw"]["step_count"] == old.step_count + 1
