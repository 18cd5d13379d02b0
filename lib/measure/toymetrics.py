"""Exact metrics of 2-D toy samples against the known Gaussian mixture (``lib/data.GMM``)."""
from __future__ import annotations

import torch

from lib.measure.metrics import frechet_distance

MMD_BANDWIDTHS = (0.1, 0.3, 1.0)


def mmd2_rbf(x, y, bandwidths=MMD_BANDWIDTHS) -> float:
    """Unbiased MMD² with the kernel k(a, b) = mean_h exp(−‖a − b‖²/(2h²)) over fixed bandwidths h
    (the toy modes' std 0.1, 3× that, and the scale of the whole distribution). Can be slightly
    negative when the two samples come from the same distribution (its expectation is then 0)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)

    def k(a, b):
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths) / len(bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def toy_metrics(samples, gmm, *, ref_samples=None, seed: int = 0, max_mmd: int = 2000,
                coverage_frac: float = 0.01, radius_std: float = 3.0) -> dict:
    """Metrics of 2-D samples against the known mixture ``gmm`` (null value for exact samples in brackets).

    * ``fd_exact``: Fréchet distance between the samples' mean/covariance and the mixture's exact
      ``mean()``/``cov()`` [≈ 0, O(1/n)]. It sees only the first two moments.
    * ``nll``: mean −log p(sample) under the true density; ``nll_ref``: the same for reference
      samples, a Monte-Carlo estimate of the entropy H(p), its null value. Not a divergence: samples
      piled on the mode centres score *below* ``nll_ref``, so read it with the others.
    * ``mmd``: unbiased RBF MMD² (bandwidths ``MMD_BANDWIDTHS``) against reference samples, on at
      most ``max_mmd`` points of each [≈ 0].
    * ``mode_coverage``: fraction of modes with at least ``coverage_frac`` of the samples within
      ``radius_std``·std of their centre [1].
    * ``frac_in_modes``: fraction of samples within ``radius_std``·std of some mode centre
      [``frac_in_modes_expected`` = P(χ²_d ≤ radius_std²) = 0.989 in 2-D]; samples stranded between
      modes lower it.
    * ``mode_tv``: total variation between the share of samples nearest to each mode and the
      mixture weights [≈ 0, O(√(K/n))]; mode dropping or imbalance raises it.

    Reference samples default to ``max(n, 10000)`` fresh draws with ``torch.Generator().manual_seed(seed)``."""
    from scipy.stats import chi2

    x = torch.as_tensor(samples).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[1] != gmm.dim or len(x) < 2:
        raise ValueError(f"samples must be [n >= 2, {gmm.dim}], got {tuple(x.shape)}")
    bad = int((~torch.isfinite(x).all(1)).sum())
    if bad:
        raise ValueError(f"{bad} of {len(x)} samples are not finite (the sampler diverged); no metric is meaningful")
    gen = torch.Generator().manual_seed(seed)
    ref = (gmm.sample(max(len(x), 10_000), generator=gen) if ref_samples is None else torch.as_tensor(ref_samples))
    ref = ref.detach().to("cpu", torch.float64)

    fd = frechet_distance(x.mean(0).numpy(), torch.cov(x.T).numpy(), gmm.mean().numpy(), gmm.cov().numpy())
    sub_x = x[torch.randperm(len(x), generator=gen)[:max_mmd]]
    sub_r = ref[torch.randperm(len(ref), generator=gen)[:max_mmd]]

    d = torch.cdist(x, gmm.means)  # [n, K]
    near = d <= radius_std * gmm.std
    counts = near.sum(0).double()
    share = torch.bincount(d.argmin(1), minlength=gmm.n_modes).double() / len(x)
    return dict(
        fd_exact=fd,
        nll=float(-gmm.log_prob(x).mean()),
        nll_ref=float(-gmm.log_prob(ref).mean()),
        mmd=mmd2_rbf(sub_x, sub_r),
        mode_coverage=float((counts >= coverage_frac * len(x)).double().mean()),
        frac_in_modes=float(near.any(1).double().mean()),
        frac_in_modes_expected=float(chi2.cdf(radius_std**2, gmm.dim)),
        mode_tv=float(0.5 * (share - gmm.weights).abs().sum()),
        n=len(x),
    )
