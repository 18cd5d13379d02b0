"""Epsilon scaling (lib/related/epsscale.py): λ ≡ 1 is the identity bit for bit, the λ_t schedules have the stated
form, and the implied factor is the inverse of S²-DM's shrinkage optimum (docs/method.md §1)."""
import pytest
import torch

from lib import samplers
from lib.related import epsscale
from lib.analytic import gaussian_eps
from lib.schedule import linear_schedule

SCH = linear_schedule()


def model(x, t):
    return gaussian_eps(x, t, SCH, 0.5) + 0.1 * torch.sin(x)


def test_lambda_one_is_the_identity_bit_for_bit():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 3.0, 250.5, 600.0, 999.0])
    ref = model(x, t)
    for lam in (epsscale.Constant(1.0), epsscale.Linear(1.0, 0.0), lambda tt: torch.ones_like(tt, dtype=torch.float64)):
        assert torch.equal(epsscale.EpsScaled(model, lam)(x, t), ref)
    out = samplers.sample(epsscale.EpsScaled(model, epsscale.Constant(1.0)), x, SCH, 10, "pndm")
    assert torch.equal(out, samplers.sample(model, x, SCH, 10, "pndm"))


def test_constant_and_linear_schedules():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0.0, 100.0, 500.0, 999.0], dtype=torch.float64)
    torch.testing.assert_close(epsscale.EpsScaled(model, epsscale.Constant(1.01))(x, t) * 1.01, model(x, t))
    lin = epsscale.Linear(b=1.005, k=0.02, T=1000)
    assert float(lin(0.0)) == pytest.approx(0.995) and float(lin(999.0)) == pytest.approx(1.015)
    assert float(lin(torch.arange(1000.0)).mean()) == pytest.approx(1.005)  # Ning et al.'s form: mean b
    torch.testing.assert_close(epsscale.EpsScaled(model, lin)(x, t) * lin(t)[:, None], model(x, t))
    with pytest.raises(ValueError, match="stays positive"):
        epsscale.Linear(1.0, 3.0)
    with pytest.raises(ValueError, match="positive number"):
        epsscale.Constant(0.0)


def test_implied_factor_inverts_the_s2dm_shrinkage():
    lam = epsscale.implied_s2dm(SCH, skip=9, tau=0.99)
    t = torch.arange(0, 1000, dtype=torch.float64)
    f = lam(t)
    torch.testing.assert_close(f, 1 / SCH.shrinkage(t, 9, 0.99), rtol=0, atol=0)
    assert bool((f[:9] == 1).all()) and bool((f[9:] > 1).all())
    # (τ + (1−τ)c²)/τ with c² = (1−α_skip)/α_skip, by hand at t = 500
    a = float(SCH.alpha_bar(500) / SCH.alpha_bar(491))
    assert float(f[500]) == pytest.approx((0.99 + 0.01 * (1 - a) / a) / 0.99, rel=1e-12)
    # size of the effect (docs/method.md §1): at most 0.2 % for skip 9, 1.6 % for skip 49
    assert 1.001 < float(f.max()) < 1.003
    assert 1.01 < float(epsscale.implied_s2dm(SCH, 49)(t).max()) < 1.02
    # the scaled exact ε is the minimiser of τ L_0 + (1−τ) L_skip: shrinkage × E[ε | x]
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tt = torch.tensor([5.0, 300.0, 900.0], dtype=torch.float64)
    scaled = epsscale.EpsScaled(lambda x, t: gaussian_eps(x, t, SCH, 0.5), lam)(x, tt)
    torch.testing.assert_close(scaled, SCH.shrinkage(tt, 9, 0.99)[:, None] * gaussian_eps(x, tt, SCH, 0.5))


def test_composes_with_samplers_and_keeps_the_nfe():
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    for method in ("ddim", "deis", "heun"):
        info = {}
        out = samplers.sample(epsscale.EpsScaled(model, epsscale.Constant(1.02)), x, SCH, 10, method, info=info)
        assert info["nfe"] == samplers.nfe(method, 10) and torch.isfinite(out).all()
        assert not torch.equal(out, samplers.sample(model, x, SCH, 10, method))


def test_bad_input():
    with pytest.raises(TypeError, match="callable"):
        epsscale.EpsScaled(model, 1.02)
    with pytest.raises(ValueError, match="tau"):
        epsscale.implied_s2dm(SCH, 9, 0.0)
