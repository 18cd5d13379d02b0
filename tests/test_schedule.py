"""Float64 identities of the noise schedule (docs/method.md: math identities in float64)."""
import numpy as np
import pytest
import torch

from lib.schedule import linear_schedule


@pytest.fixture(scope="module")
def s():
    return linear_schedule()


def test_alphas_bar_is_the_product_of_alphas(s):
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # the DDIM code's betas
    ab = np.cumprod(1 - betas)
    assert s.alphas_bar.dtype == torch.float64 and s.T == 1000
    np.testing.assert_allclose(s.alphas_bar.numpy(), ab, rtol=1e-14)
    np.testing.assert_allclose(s.alpha_bar(torch.arange(1000.0)).numpy(), ab, rtol=1e-12)
    assert float(s.alpha_bar(-1.0)) == 1.0


def test_fractional_t_is_monotone_and_log_linear(s):
    t = torch.linspace(-1, 999, 20001, dtype=torch.float64)
    ab = s.alpha_bar(t)
    assert bool((ab[1:] < ab[:-1]).all())
    mid = s.alpha_bar(torch.tensor(10.5, dtype=torch.float64))
    assert float(mid) == pytest.approx(float(torch.sqrt(s.alphas_bar[10] * s.alphas_bar[11])), rel=1e-13)


def test_sigma_and_its_inverse(s):
    t = torch.linspace(-1, 999, 3001, dtype=torch.float64)
    sig = s.sigma(t)
    np.testing.assert_allclose(sig.numpy(), np.sqrt((1 - s.alpha_bar(t).numpy()) / s.alpha_bar(t).numpy()), rtol=1e-14)
    np.testing.assert_allclose(s.t_from_sigma(sig).numpy(), t.numpy(), atol=1e-9)
    with pytest.raises(ValueError, match="sigma must lie"):
        s.t_from_sigma(torch.tensor(1e6))
    with pytest.raises(ValueError, match="t must lie"):
        s.alpha_bar(torch.tensor(1000.0))


def test_alpha_skip_is_the_product_over_the_last_skip_steps(s):
    alphas = 1 - s.betas
    for skip in (1, 9, 49):
        for t in (skip, 100, 537, 999):
            expect = torch.prod(alphas[t - skip + 1:t + 1])
            assert float(s.alpha_skip(torch.tensor(float(t)), skip)) == pytest.approx(float(expect), rel=1e-12)
    # t < skip clamps to index 0 (the official code's max(t - skip, 0))
    assert float(s.alpha_skip(torch.tensor(3.0), 9)) == pytest.approx(float(s.alphas_bar[3] / s.alphas_bar[0]), rel=1e-13)


def test_shrinkage_bounds_quoted_in_paper_md(s):
    t = torch.arange(1000, dtype=torch.float64)
    for skip, bound in ((9, 0.002), (49, 0.016), (99, 0.054)):
        f = s.shrinkage(t, skip, 0.99)
        assert float(1 - f.min()) == pytest.approx(bound, abs=0.0006)
        assert bool((f[:skip] == 1).all()) and bool((f <= 1).all())
    assert bool((s.shrinkage(t, 9, 1.0) == 1).all())


def test_grids_follow_the_ddim_code(s):
    u10 = s.timesteps(10, "uniform").tolist()
    assert u10 == list(range(900, -1, -100))
    q10 = s.timesteps(10, "quad").tolist()
    assert q10[0] == 800 and q10[-1] == 0
    assert q10 == [int(v) for v in (np.linspace(0, np.sqrt(800), 10) ** 2)][::-1]
    q100 = s.timesteps(100, "quad")
    assert len(q100) == 100 and len(torch.unique(q100)) < 100  # repeats for S >= 50 (documented quirk)
    assert len(s.timesteps(30, "uniform")) == 31  # range(0, 1000, 33)
    pairs = s.step_pairs(10)
    assert pairs[0] == (900, 800) and pairs[-1] == (0, -1)
    with pytest.raises(ValueError, match="valid grids"):
        s.timesteps(10, "cosine")
    with pytest.raises(ValueError, match="positive integer"):
        s.timesteps(0)


def test_q_sample(s):
    x0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    ab = s.alphas_bar[t.long()].view(-1, 1)
    np.testing.assert_allclose(s.q_sample(x0, t, eps).numpy(), (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).numpy(), rtol=1e-12)
