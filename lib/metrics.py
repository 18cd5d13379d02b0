"""Offline metrics: the classifier Fréchet distance (FD_clf) with bootstrap intervals, and exact toy metrics.

FD_clf is the Fréchet distance d² = ‖μ₁ − μ₂‖² + Tr(C₁ + C₂ − 2(C₁C₂)^{1/2}) (the FID formula) between
Gaussians fitted to the penultimate features of a small CNN classifier trained on the dataset's own
labels. It runs without downloads on digits, MNIST-5k and CIFAR-10. It is *not* FID: its numbers are
on another scale and must never be compared with Inception FID (see ``lib/fid.py`` for that).

Uncertainty (:func:`fd_bootstrap`, :func:`compare_bootstrap`) resamples the *generated* features
with replacement and keeps the reference statistics fixed: the question is how much FD would move
with another draw of generated samples from the same model, against the same reference set.
FD is biased upwards at finite n (a resample holds ≈63% distinct points), so the bootstrap
distribution sits slightly above the point estimate; the intervals are plain percentile intervals.

Toy metrics (:func:`toy_metrics`) compare 2-D samples with the known Gaussian mixture (``lib/data.GMM``).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import linalg

from lib.checkpoint import atomic_write_bytes

CLASSIFIER_DATASETS = ("digits", "mnist", "cifar10")


# ============================================================================ the feature classifier
class FeatureClassifier(nn.Module):
    """conv3×3 → SiLU → avgpool2 → conv3×3 → SiLU → avgpool2 → conv3×3 → SiLU → adaptive avgpool
    (4×4, or 2×2 below 16 px) → linear → SiLU (the features, 4·width wide) → linear head.

    SiLU rather than ReLU keeps the features free of exact zeros (dead units make the feature
    covariance singular)."""

    def __init__(self, in_channels: int, resolution: int, n_classes: int, width: int = 32):
        super().__init__()
        self.arch = dict(in_channels=in_channels, resolution=resolution, n_classes=n_classes, width=width)
        w = width
        pooled = 4 if resolution >= 16 else 2
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(pooled), nn.Flatten(),
            nn.Linear(2 * w * pooled * pooled, 4 * w), nn.SiLU(),
        )
        self.head = nn.Linear(4 * w, n_classes)
        self.feature_dim = 4 * w
        self.meta: dict = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        c, r = self.arch["in_channels"], self.arch["resolution"]
        if x.ndim != 4 or x.shape[1] != c or x.shape[2:] != (r, r):
            raise ValueError(f"this classifier takes images [N, {c}, {r}, {r}] in [-1, 1], got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(images_uint8: torch.Tensor, labels: torch.Tensor, *, steps: int, width: int, seed: int = 0,
                     device="cpu", progress: bool = True, batch_size: int = 128, lr: float = 2e-3) -> nn.Module:
    """Train :class:`FeatureClassifier` with Adam on 90% of the images (in model range [-1, 1]);
    the accuracy on the held-out 10% is printed and stored in ``model.meta['heldout_accuracy']``.
    Returns the model in eval mode on ``device``."""
    from lib.progress import tqdm

    from lib.data import to_model_range

    if labels is None:
        raise ValueError("the classifier needs labels; this dataset has none (use eval.metric='inception')")
    n, c, h, w = images_uint8.shape
    if h != w:
        raise ValueError(f"square images expected, got {h}x{w}")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n_classes = int(labels.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, n // 10)
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    x_all = to_model_range(images_uint8).to(device)
    y_all = labels.to(device)

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        model = FeatureClassifier(c, h, n_classes, width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0 = time.time()
    bar = tqdm(range(steps), desc="FD_clf classifier", disable=not progress)
    for _ in bar:
        b = tr_idx[torch.randint(len(tr_idx), (batch_size,), generator=gen)].to(device)
        loss = F.cross_entropy(model(x_all[b]), y_all[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    with torch.no_grad():
        val_idx = val_idx.to(device)
        pred = torch.cat([model(x_all[val_idx[i:i + 1000]]).argmax(1) for i in range(0, n_val, 1000)])
        acc = float((pred == y_all[val_idx]).float().mean())
    model.meta = dict(heldout_accuracy=acc, n_train=len(tr_idx), n_heldout=n_val, steps=steps, seed=seed,
                      batch_size=batch_size, lr=lr, train_seconds=round(time.time() - t0, 1))
    if progress:
        print(f"FD_clf classifier: held-out accuracy {acc:.3f} on {n_val} images after {steps} steps")
    return model


def classifier_key(data_cfg, eval_cfg) -> str:
    return (f"{data_cfg.dataset}_{data_cfg.image_size}px_w{eval_cfg.classifier_width}"
            f"_s{eval_cfg.classifier_steps}")


def get_classifier(data_cfg, eval_cfg, cache_dir="data/classifiers", device="cpu", progress: bool = True) -> nn.Module:
    """The FD_clf classifier for this dataset and image size: trained once on *all* labelled images of
    the dataset (whatever ``data.n_train`` is), then cached as ``<key>.pt`` (state dict) and
    ``<key>.json`` (architecture, accuracy, settings), with key dataset/image_size/width/steps."""
    from lib.data import load_images

    if data_cfg.dataset not in CLASSIFIER_DATASETS:
        raise ValueError(f"FD_clf needs a labelled image dataset ({', '.join(CLASSIFIER_DATASETS)}), got "
                         f"{data_cfg.dataset!r}; use eval.metric='inception' for CelebA")
    cache_dir = Path(cache_dir)
    key = classifier_key(data_cfg, eval_cfg)
    pt, js = cache_dir / f"{key}.pt", cache_dir / f"{key}.json"
    if pt.is_file() and js.is_file():
        meta = json.loads(js.read_text())
        model = FeatureClassifier(**meta["arch"])
        model.load_state_dict(torch.load(pt, weights_only=True, map_location="cpu"))
        model.meta = meta
        return model.to(device).eval()

    images, labels = load_images(replace(data_cfg, n_train=0))
    model = train_classifier(images, labels, steps=eval_cfg.classifier_steps, width=eval_cfg.classifier_width,
                             device=device, progress=progress)
    meta = dict(model.meta, arch=model.arch, key=key, dataset=data_cfg.dataset, image_size=data_cfg.image_size,
                feature_dim=model.feature_dim, n_images=len(images))
    model.meta = meta
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(pt, lambda f: torch.save({k: v.cpu() for k, v in model.state_dict().items()}, f))
    atomic_write_bytes(js, lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return model


@torch.no_grad()
def features(model: nn.Module, x_model_range: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Penultimate features of ``x`` (images in [-1, 1]) as a float64 numpy array [N, D]."""
    model.eval()
    dev = next(model.parameters()).device
    out = [model.features(x_model_range[i:i + batch_size].to(dev, torch.float32)).double().cpu()
           for i in range(0, len(x_model_range), batch_size)]
    return torch.cat(out).numpy()


# ============================================================================ Fréchet distance
def frechet_distance(mu1, cov1, mu2, cov2, eps: float = 1e-6) -> float:
    """d² = ‖μ₁ − μ₂‖² + Tr(C₁) + Tr(C₂) − 2 Tr((C₁C₂)^{1/2}) in float64.

    As in standard FID code: if the matrix square root of the (near-singular) product is not
    finite, retry with ``eps``·I added to both covariances; a small imaginary part from round-off
    is dropped, a large one (a sign of non-PSD input) raises."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: mu {mu1.shape} vs {mu2.shape}, cov {cov1.shape} vs {cov2.shape}")
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(len(mu1))
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: sqrtm has an imaginary component of "
                             f"{np.abs(covmean.imag).max():.3g}; are the covariances positive semi-definite?")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def _as_features(f) -> np.ndarray:
    f = f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
    f = f.astype(np.float64, copy=False)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {f.shape}")
    return f


def gaussian_stats(f) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and unbiased covariance (ddof 1) of features [N, D], float64."""
    f = _as_features(f)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def reference_moments(f_ref) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of a reference: features [N, D], or already a (μ, Σ) pair (e.g. clean-fid's stored
    Inception statistics, lib.fid.reference_stats)."""
    if isinstance(f_ref, tuple) and len(f_ref) == 2:
        mu, cov = (np.asarray(a, dtype=np.float64) for a in f_ref)
        if mu.ndim != 1 or cov.shape != (len(mu), len(mu)):
            raise ValueError(f"reference statistics must be (mu [D], cov [D, D]), got {mu.shape} and {cov.shape}")
        return mu, cov
    return gaussian_stats(f_ref)


def fd_from_features(f_gen, f_ref) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (FD_clf on classifier
    features); ``f_ref`` may also be a (μ, Σ) pair."""
    return frechet_distance(*gaussian_stats(f_gen), *reference_moments(f_ref))


class _FDToReference:
    """FD of many feature sets against one fixed reference, for bootstraps.

    Uses Tr((C C_r)^{1/2}) = Σᵢ √λᵢ(S C S) with S = C_r^{1/2}: C C_r = (C S)S and S(C S) share their
    eigenvalues, and S C S is symmetric PSD, so one ``eigvalsh`` per call replaces ``sqrtm`` (which
    takes seconds at D = 2048). Runs in float64 on ``device``."""

    def __init__(self, f_ref, device="cpu"):
        mu, cov = reference_moments(f_ref)
        self.device = torch.device(device)
        self.mu = torch.from_numpy(mu).to(self.device)
        cov_t = torch.from_numpy(cov).to(self.device)
        lam, v = torch.linalg.eigh(cov_t)
        self.S = (v * lam.clamp(min=0).sqrt()) @ v.T
        self.tr_ref = float(torch.trace(cov_t))

    def __call__(self, f: torch.Tensor) -> float:
        mu = f.mean(0)
        fc = f - mu
        cov = fc.T @ fc / (len(f) - 1)
        lam = torch.linalg.eigvalsh(self.S @ cov @ self.S).clamp(min=0)
        d = mu - self.mu
        return float(d @ d + torch.trace(cov) + self.tr_ref - 2.0 * lam.sqrt().sum())


def _percentiles(x: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(x, [a, 1.0 - a])
    return float(lo), float(hi)


def _boot_fds(f: np.ndarray, fd_ref: _FDToReference, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    ft = torch.from_numpy(f).to(fd_ref.device)
    out = np.empty(n_boot)
    for b in range(n_boot):
        idx = torch.from_numpy(rng.integers(0, len(f), len(f))).to(fd_ref.device)
        out[b] = fd_ref(ft[idx])
    return out


def fd_bootstrap(f_gen, f_ref, *, n_boot: int = 200, level: float = 0.95, seed: int = 0, device="cpu") -> dict:
    """FD with a bias-corrected percentile bootstrap interval: resample the generated features with
    replacement (n_boot times, the reference statistics fixed), take the percentile interval of the
    bootstrap FDs and shift it by the bootstrap's bias estimate, mean(FD*) − FD.

    Why the shift: resampling with replacement duplicates samples, which *raises* every bootstrap FD
    (the same small-sample bias that makes FD grow as n shrinks), so at a few hundred samples the
    plain percentile interval can lie entirely above the full-sample FD; the reverse-percentile
    ("basic") interval then flips below it. Subtracting the estimated bias keeps the interval's
    width (the sampling spread) and centres it on the estimate. Returns value (the FD of all
    features), lo, hi, std (of the bootstrap FDs), bias, n, n_boot, level."""
    f_gen = _as_features(f_gen)
    f_ref = f_ref if isinstance(f_ref, tuple) else _as_features(f_ref)
    fd_ref = _FDToReference(f_ref, device)
    boots = _boot_fds(f_gen, fd_ref, n_boot, np.random.default_rng(seed))
    value = fd_from_features(f_gen, f_ref)
    bias = float(boots.mean() - value)
    q_lo, q_hi = _percentiles(boots, level)
    return dict(value=value, lo=max(q_lo - bias, 0.0), hi=q_hi - bias, std=float(boots.std(ddof=1)),
                bias=bias, n=len(f_gen), n_boot=n_boot, level=level)


def compare_bootstrap(f_a, f_b, f_ref, *, n_boot: int = 200, level: float = 0.95, seed: int = 0,
                      device="cpu", paired: bool = False) -> dict:
    """Paired comparison of two arms against the same reference: FD_a − FD_b and the relative
    improvement (FD_a − FD_b)/FD_a, each with a bias-corrected percentile interval from independent resamples of
    each arm's generated features. ``excludes_zero``: the interval of the difference excludes 0.
    With a the baseline and b the S²-DM, a positive difference means b is better.

    ``paired=True`` (equal sizes, sample i of both arms from the same initial noise x_T, as
    lib.generate produces them) resamples the same indices in both arms, so the interval reflects
    the variation of the *difference* rather than of each arm separately (narrower, still valid)."""
    f_a, f_b = _as_features(f_a), _as_features(f_b)
    f_ref = f_ref if isinstance(f_ref, tuple) else _as_features(f_ref)
    fd_ref = _FDToReference(f_ref, device)
    if paired and len(f_a) != len(f_b):
        raise ValueError(f"paired comparison needs equally many samples per arm, got {len(f_a)} and {len(f_b)}")
    rng_a, rng_b = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if paired:  # the same generator state for both arms: identical index draws
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    ba, bb = _boot_fds(f_a, fd_ref, n_boot, rng_a), _boot_fds(f_b, fd_ref, n_boot, rng_b)
    fa, fb = fd_from_features(f_a, f_ref), fd_from_features(f_b, f_ref)
    diff, rel = ba - bb, (ba - bb) / ba
    # Bias-corrected percentile intervals, as in fd_bootstrap: resampling biases both FDs upwards,
    # and the shift re-centres each interval on its full-sample estimate.
    d_lo, d_hi = (q - (diff.mean() - (fa - fb)) for q in _percentiles(diff, level))
    r_lo, r_hi = (q - (rel.mean() - (fa - fb) / fa) for q in _percentiles(rel, level))
    return dict(fd_a=fa, fd_b=fb, diff=fa - fb, diff_lo=d_lo, diff_hi=d_hi, diff_std=float(diff.std(ddof=1)),
                rel=(fa - fb) / fa, rel_lo=r_lo, rel_hi=r_hi, excludes_zero=bool(d_lo > 0 or d_hi < 0),
                n_a=len(f_a), n_b=len(f_b), n_boot=n_boot, level=level, paired=paired)


# ============================================================================ toy metrics
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
