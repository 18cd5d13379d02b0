"""Exact ε and probability-flow solutions (lib/analytic.py), all checks in float64."""
import pytest
import torch

from lib import samplers
from lib.analytic import gaussian_eps, gaussian_ode_solution, gmm_eps, gmm_sample
from lib.schedule import linear_schedule

SCH = linear_schedule()
F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_gaussian_eps_is_gmm_eps_with_one_centred_component():
    x = randn(6, 5)
    t = torch.tensor([0.0, 3.5, 100.0, 499.25, 900.0, 999.0], dtype=F64)
    for s in (0.3, 1.0, 2.0):
        torch.testing.assert_close(gaussian_eps(x, t, SCH, s), gmm_eps(x, t, SCH, torch.zeros(1, 5), s, [1.0]),
                                   rtol=1e-13, atol=1e-15)


def test_gmm_eps_matches_importance_sampled_posterior_mean():
    """E[ε | x_t] = Σ_i w_i ε_i / Σ_i w_i with x0_i from the data, ε_i = (x_t - √ᾱ x0_i)/√(1-ᾱ) and
    w_i = p(x_t | x0_i): a Monte Carlo estimate independent of the closed form."""
    means, std, weights = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]], dtype=F64), 0.3, [0.5, 0.3, 0.2]
    x0 = gmm_sample(400_000, means, std, weights, generator=torch.Generator().manual_seed(1))
    xt = torch.tensor([[0.3, -0.2], [-0.9, 0.4], [1.2, 1.0]], dtype=F64)
    for t in (200.0, 500.5, 900.0):
        ab = float(SCH.alpha_bar(t))
        eps_i = (xt[:, None, :] - ab**0.5 * x0[None]) / (1 - ab) ** 0.5  # [3, n, 2]
        logw = -(eps_i**2).sum(-1) / 2
        w = torch.softmax(logw, dim=1)
        mc = (w[..., None] * eps_i).sum(1)
        se = ((w[..., None] ** 2) * (eps_i - mc[:, None]) ** 2).sum(1).sqrt()  # MC standard error
        tt = torch.full((3,), t, dtype=F64)
        exact = gmm_eps(xt, tt, SCH, means, std, weights)
        assert (1 / (w**2).sum(1) > 1e4).all()  # effective sample size
        assert ((mc - exact).abs() / se).max() < 5
        # The check has teeth: a 10% shrunk ε or wrong mixture weights is far outside the MC error.
        assert ((mc - 0.9 * exact).abs() / se).max() > 50
        wrong = gmm_eps(xt, tt, SCH, means, std, [0.2, 0.3, 0.5])
        assert ((mc - wrong).abs() / se).max() > 50


def test_gmm_eps_is_finite_far_away_and_checks_its_inputs():
    means = torch.tensor([[0.0, 0.0], [5.0, 5.0]], dtype=F64)
    out = gmm_eps(torch.full((2, 2), 1e4, dtype=F64), torch.tensor([10.0, 10.0]), SCH, means, 0.1, [0.5, 0.5])
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="means must be"):
        gmm_eps(torch.zeros(2, 3, dtype=F64), 10.0, SCH, means, 0.1, [0.5, 0.5])
    with pytest.raises(ValueError, match="weights"):
        gmm_eps(torch.zeros(2, 2, dtype=F64), 10.0, SCH, means, 0.1, [1.0])
    with pytest.raises(ValueError, match="t must be"):
        gaussian_eps(torch.zeros(2, 2, dtype=F64), torch.zeros(3), SCH, 0.5)


def test_gaussian_ode_solution_satisfies_the_probability_flow_ode():
    """dy/dσ = ε(x_t, t) with y = x/√ᾱ: central differences in σ at fractional t."""
    s, x_T, t_from = 0.5, randn(4, 3), 950.0
    for t in (3.5, 123.4, 500.5, 876.25):
        sig = float(SCH.sigma(t))
        d = 1e-5 * sig
        tp, tm = (float(SCH.t_from_sigma(torch.tensor(v, dtype=F64))) for v in (sig + d, sig - d))
        y = lambda tt: gaussian_ode_solution(x_T, t_from, tt, SCH, s) / SCH.alpha_bar(tt).sqrt()
        dy_dsigma = (y(tp) - y(tm)) / (2 * d)
        x_t = gaussian_ode_solution(x_T, t_from, t, SCH, s)
        torch.testing.assert_close(dy_dsigma, gaussian_eps(x_t, t, SCH, s), rtol=1e-7, atol=1e-9)


def test_gaussian_ode_solution_composes_and_maps_variances():
    s, x = 0.7, randn(5, 4)
    via = gaussian_ode_solution(gaussian_ode_solution(x, 999, 400.5, SCH, s), 400.5, -1, SCH, s)
    torch.testing.assert_close(via, gaussian_ode_solution(x, 999, -1, SCH, s), rtol=1e-14, atol=0)
    # x_T ~ N(0, v_T) is carried to N(0, s²) at t = -1.
    ab = float(SCH.alpha_bar(999))
    v_T = ab * s**2 + 1 - ab
    ratio = gaussian_ode_solution(x, 999, -1, SCH, s) / x
    torch.testing.assert_close(ratio, torch.full_like(x, s / v_T**0.5), rtol=1e-13, atol=0)
    # per-sample times broadcast
    t_from = torch.tensor([999.0, 500.0, 100.0, 10.0, 0.0], dtype=F64)
    out = gaussian_ode_solution(x, t_from, -1, SCH, s)
    torch.testing.assert_close(out[2], gaussian_ode_solution(x[2:3], 100.0, -1, SCH, s)[0])


def test_ddim_with_many_steps_converges_to_the_exact_solution():
    s, x = 0.5, randn(8, 6, seed=2)
    model = lambda x, t: gaussian_eps(x, t, SCH, s)
    errs = {}
    for S in (100, 1000):
        exact = gaussian_ode_solution(x, int(SCH.timesteps(S)[0]), -1, SCH, s)
        errs[S] = float((samplers.sample(model, x, SCH, S, "ddim") - exact).norm() / exact.norm())
    assert errs[1000] < 5e-3 and errs[1000] < errs[100] / 8


def test_gmm_sample_has_the_mixture_moments():
    means, weights = torch.tensor([[-2.0], [3.0]], dtype=F64), [0.25, 0.75]
    x = gmm_sample(200_000, means, 0.5, weights, generator=torch.Generator().manual_seed(0))
    mean = 0.25 * -2 + 0.75 * 3
    var = 0.25 + 0.25 * 4 + 0.75 * 9 - mean**2
    assert x.shape == (200_000, 1)
    assert float(x.mean()) == pytest.approx(mean, abs=0.02) and float(x.var()) == pytest.approx(var, rel=0.02)
