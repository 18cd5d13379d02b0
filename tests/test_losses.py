"""The S²-DM loss against its definition (docs/method.md §1), in float64."""
import pytest
import torch

from lib.losses import ddpm_loss, s2dm_loss, sample_t
from lib.schedule import linear_schedule

S = linear_schedule()


def lin_model(x, t):  # a fixed, t-dependent "network"
    return 0.3 * x + 1e-3 * t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (n,), generator=g).double()
    return x0, t, torch.randn_like(x0), torch.randn_like(x0)


def test_per_sample_shapes_and_antithetic_t():
    x0, t, e, e2 = batch()
    assert ddpm_loss(lin_model, x0, S, t=t, noise=e).shape == (64,)
    assert s2dm_loss(lin_model, x0, S, t=t, noise=e, noise_skip=e2).shape == (64,)
    tt = sample_t(9, 1000, generator=torch.Generator().manual_seed(1))
    assert tt.shape == (9,) and torch.equal(tt[5:], 999 - tt[:4])


def test_tau_one_is_exactly_the_ddpm_loss():
    x0, t, e, e2 = batch()
    assert torch.equal(s2dm_loss(lin_model, x0, S, tau=1.0, t=t, noise=e, noise_skip=e2),
                       ddpm_loss(lin_model, x0, S, t=t, noise=e))


def test_matches_the_definition():
    x0, t, e, e2 = batch()
    skip, tau = 9, 0.9
    t = t.clone()
    t[:4] = torch.tensor([0.0, 3.0, 8.0, 9.0], dtype=t.dtype)  # both branches of the definition, and its edge t = skip
    ab = S.alphas_bar[t.long()].view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * e
    eps = lin_model(xt, t)
    a_skip = (S.alphas_bar[t.long()] / S.alphas_bar[(t.long() - skip).clamp(min=0)]).view(-1, 1, 1, 1)
    c = ((1 - a_skip) / a_skip).sqrt()
    l0 = ((e - eps) ** 2).flatten(1).mean(1)
    lskip = ((e2 - c * eps) ** 2).flatten(1).mean(1)
    expect = torch.where(t < skip, l0, tau * l0 + (1 - tau) * lskip)
    parts = {}
    got = s2dm_loss(lin_model, x0, S, skip=skip, tau=tau, t=t, noise=e, noise_skip=e2, parts=parts)
    torch.testing.assert_close(got.double(), expect, rtol=1e-6, atol=1e-6)  # c is cast to float32
    torch.testing.assert_close(parts["l0"].double(), l0, rtol=1e-6, atol=1e-6)
    # the batch exercises both branches, and they differ there: the t < skip rule is really tested
    small = t < skip
    assert 0 < int(small.sum()) < len(t)
    assert not torch.allclose((tau * l0 + (1 - tau) * lskip)[small], l0[small])


def test_small_t_uses_plain_l0_and_same_noise_ablation():
    x0, _, e, e2 = batch()
    t = torch.full((64,), 5.0, dtype=torch.float64)
    assert torch.equal(s2dm_loss(lin_model, x0, S, skip=9, tau=0.5, t=t, noise=e, noise_skip=e2),
                       ddpm_loss(lin_model, x0, S, t=t, noise=e))
    t = torch.full((64,), 500.0, dtype=torch.float64)
    same = s2dm_loss(lin_model, x0, S, tau=0.5, t=t, noise=e, noise_skip=e2, same_noise=True)
    indep = s2dm_loss(lin_model, x0, S, tau=0.5, t=t, noise=e, noise_skip=e2)
    explicit = s2dm_loss(lin_model, x0, S, tau=0.5, t=t, noise=e, noise_skip=e)
    assert torch.equal(same, explicit) and not torch.equal(same, indep)


@pytest.mark.parametrize("skip,t", [(49, 999.0), (99, 600.0), (9, 300.0)])
def test_optimum_is_the_shrinkage_of_paper_md(skip, t):
    """For data N(0, s²) the model k·E[ε|x_t] minimises E[L] at k = τ/(τ+(1−τ)c_t²) (independent ε′),
    and at k = (τ+(1−τ)c_t)/(τ+(1−τ)c_t²) with the same-ε reading: an inflation where c_t < 1 (most t
    for skip = 9), a shrinkage where c_t > 1 (large t with large skip; an earlier note said "inflate" only)."""
    s2, tau, n = 0.25, 0.9, 200_000
    ab = float(S.alphas_bar[int(t)])
    mu = lambda x, tt: (1 - ab) ** 0.5 * x / (ab * s2 + 1 - ab)  # E[ε | x_t], exact
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64) * s2 ** 0.5
    e, e2 = torch.randn(n, 1, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    c2 = float(S.c_t(torch.tensor(t), skip)) ** 2

    def k_star(same):
        # E[L](k) is quadratic in k: fit it through k = 0, 1, 2 on the same draws and take its vertex.
        L = [float(s2dm_loss(lambda x, q: k * mu(x, q), x0, S, skip=skip, tau=tau, t=tt, noise=e, noise_skip=e2,
                             same_noise=same).double().mean()) for k in (0.0, 1.0, 2.0)]
        a, b = (L[2] - 2 * L[1] + L[0]) / 2, (L[1] - L[0]) - (L[2] - 2 * L[1] + L[0]) / 2
        return -b / (2 * a)

    shrink = float(S.shrinkage(torch.tensor(t), skip, tau))
    assert shrink == pytest.approx(tau / (tau + (1 - tau) * c2), rel=1e-12)
    assert k_star(False) == pytest.approx(shrink, abs=4e-3)
    assert k_star(False) < 1
    inflate = (tau + (1 - tau) * c2 ** 0.5) / (tau + (1 - tau) * c2)
    assert k_star(True) == pytest.approx(inflate, abs=4e-3)
    assert (inflate > 1) == (c2 < 1)


def test_bad_arguments():
    x0, t, e, _ = batch()
    with pytest.raises(ValueError, match="tau"):
        s2dm_loss(lin_model, x0, S, tau=2.0, t=t, noise=e)
    with pytest.raises(ValueError, match="skip"):
        s2dm_loss(lin_model, x0, S, skip=0, t=t, noise=e)


def test_ip_loss_perturbs_the_input_not_the_target_and_gamma_zero_is_the_baseline():
    from lib.losses import ip_loss

    sch = linear_schedule(1000)
    x0, t = torch.randn(6, 1, 4, 4), torch.tensor([0.0, 5.0, 99.0, 500.0, 998.0, 999.0])
    noise, xi = torch.randn_like(x0), torch.randn_like(x0)
    seen = {}

    def model(x, tt):
        seen["x"] = x
        return 0.5 * x

    got = ip_loss(model, x0, sch, gamma=0.3, t=t, noise=noise, xi=xi)
    torch.testing.assert_close(seen["x"], sch.q_sample(x0, t, noise + 0.3 * xi))
    torch.testing.assert_close(got, (noise - 0.5 * seen["x"]).pow(2).flatten(1).mean(1))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(ip_loss(model, x0, sch, gamma=0.0, generator=g1), s2dm_loss(model, x0, sch, tau=1.0, generator=g2))
    with pytest.raises(ValueError, match="gamma"):
        ip_loss(model, x0, sch, gamma=-0.1)
