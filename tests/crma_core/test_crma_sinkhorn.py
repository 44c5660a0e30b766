"""T1–T3 and T6(c): Sinkhorn produces doubly stochastic matrices of spectral norm 1."""

import itertools

import pytest
import torch

from crma_core import sinkhorn
from crma_core.mixing import marginal_error


def _test_logits() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    random = torch.rand(100, 4, 4, generator=generator, dtype=torch.float64) * 10 - 5
    diagonal = torch.stack([k * torch.eye(4, dtype=torch.float64) for k in (0.0, 3.0, 10.0)])
    return torch.cat([random, diagonal])


def _doubly_stochastic(m: torch.Tensor, tol: float = 1e-6) -> None:
    assert (m >= 0).all()
    assert float((m.sum(-1) - 1).abs().max()) <= tol
    assert float((m.sum(-2) - 1).abs().max()) <= tol


def test_t1_doubly_stochastic_batched():
    m = sinkhorn(_test_logits(), 20, tol=1e-9)
    assert m.shape == (103, 4, 4) and m.dtype == torch.float64
    _doubly_stochastic(m)
    assert float(marginal_error(m).max()) <= 1e-6


def test_t1_one_matrix_at_a_time_matches_batch():
    logits = _test_logits()
    batched = sinkhorn(logits, 20)
    single = torch.stack([sinkhorn(x, 20) for x in logits])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)


def test_t2_spectral_norm_is_one():
    m = sinkhorn(_test_logits(), 20, tol=1e-9)
    norms = torch.linalg.matrix_norm(m, ord=2)
    assert float(norms.min()) >= 1 - 1e-6
    assert float(norms.max()) <= 1 + 1e-6


def test_t3_limits():
    eye = torch.eye(4, dtype=torch.float64)
    uniform = sinkhorn(torch.zeros(4, 4, dtype=torch.float64), 20)
    torch.testing.assert_close(uniform, torch.full((4, 4), 0.25, dtype=torch.float64),
                               rtol=0, atol=1e-7)
    torch.testing.assert_close(sinkhorn(50 * eye, 20), eye, rtol=0, atol=1e-6)
    for perm in itertools.islice(itertools.permutations(range(4)), 5):
        p = eye[list(perm)]
        torch.testing.assert_close(sinkhorn(50 * p, 20), p, rtol=0, atol=1e-6)


def test_t3_identity_init_value():
    m = sinkhorn(3 * torch.eye(4, dtype=torch.float64), 20)
    expected = torch.e ** 3 / (torch.e ** 3 + 3)
    assert abs(float(m[0, 0]) - expected) < 1e-9
    assert abs(float(m[0, 0]) - 0.870) < 1e-3


def test_early_exit_reaches_tolerance_where_20_iterations_do_not():
    logits = _test_logits()
    plain = marginal_error(sinkhorn(logits, 20))
    refined = marginal_error(sinkhorn(logits, 20, tol=1e-9))
    assert float(plain.max()) > 1e-3  # 20 iterations alone are not enough for peaked logits
    assert float(refined.max()) <= 1e-9
    # Nearly singular logits converge sublinearly: the cap bounds the work, and the extra
    # iterations still help.
    generator = torch.Generator().manual_seed(7)
    peaked = torch.randn(20, 4, 4, generator=generator, dtype=torch.float64) * 8
    capped = sinkhorn(peaked, 20, tol=1e-12, max_iters=200)
    assert (marginal_error(capped) <= marginal_error(sinkhorn(peaked, 20)) + 1e-12).all()


def test_float32_and_temperature():
    logits = _test_logits()[:10].float()
    m = sinkhorn(logits, 20, tol=1e-6, dtype=torch.float32)
    assert m.dtype == torch.float32
    _doubly_stochastic(m, 1e-5)
    sharp = sinkhorn(logits.double(), 20, tau=0.5, tol=1e-9)
    torch.testing.assert_close(sharp, sinkhorn(2 * logits.double(), 20, tol=1e-9))


def test_rejects_bad_shapes_and_dtypes():
    with pytest.raises(ValueError):
        sinkhorn(torch.zeros(3, 4), 20)
    with pytest.raises(ValueError):
        sinkhorn(torch.zeros(4, 4), 20, dtype=torch.bfloat16)


def test_t6c_gradcheck():
    logits = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, 20), (logits,))
    batch = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, 10, tau=0.7), (batch,))


def test_public_name_is_the_function_even_after_submodule_imports():
    import crma_core
    import crma_core.layer  # noqa: F401  (imports the Sinkhorn module)

    assert callable(crma_core.sinkhorn)
    assert crma_core.sinkhorn is sinkhorn
