"""The Fréchet distance and KID with their bootstrap intervals (FD_clf and KID on classifier features, or FID).

FD_clf is the Fréchet distance d² = ‖μ₁ − μ₂‖² + Tr(C₁ + C₂ − 2(C₁C₂)^{1/2}) (the FID formula) between
Gaussians fitted to the penultimate features of the small classifier of :mod:`lib.measure.classifier`. It is
*not* FID: its numbers are on another scale and must never be compared with Inception FID (see
``lib/measure/fid.py`` for that).

Uncertainty (:func:`fd_bootstrap`, :func:`compare_bootstrap`) resamples the *generated* features
with replacement and keeps the reference statistics fixed: the question is how much FD would move
with another draw of generated samples from the same model, against the same reference set (the
variation over *training seeds* is :mod:`lib.measure.stats`'s). FD is biased upwards at finite n (a resample
holds ≈63% distinct points), so the bootstrap distribution sits slightly above the point estimate;
the intervals are bias-corrected percentile intervals. KID (:class:`KIDToReference`, :func:`kid_bootstrap`)
is unbiased at every n; its interval is a plain percentile bootstrap over the generated samples.
Both cover the samples of one model, not another training run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg

from lib.infra.processes import single_thread


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


@dataclass(frozen=True)
class Reference:
    """A reference set where the two metrics need different parts of it: FD against stored statistics
    (clean-fid's (μ, Σ) of the training set, the published tables' reference) and KID against the
    training set's features themselves (statistics are not enough for KID). A plain feature array
    serves both; a bare (μ, Σ) pair serves FD only."""

    stats: tuple
    features: np.ndarray


def fd_reference(ref):
    """The part of a reference that FD uses: features [N, D] or (μ, Σ)."""
    return ref.stats if isinstance(ref, Reference) else ref


def kid_reference(ref):
    """The features KID uses, or None where only (μ, Σ) is known."""
    if isinstance(ref, Reference):
        return ref.features
    return None if isinstance(ref, tuple) else ref


def gaussian_stats(f) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and unbiased covariance (ddof 1) of features [N, D], float64."""
    f = _as_features(f)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def reference_moments(f_ref) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of a reference: features [N, D], or already a (μ, Σ) pair (e.g. clean-fid's stored
    Inception statistics, lib.measure.fid.reference_stats)."""
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
    takes seconds at D = 2048); with fewer samples than dimensions, the same eigenvalues from the n × n
    Gram matrix instead (cost n·D² rather than D³ per replicate). Runs in float64 on ``device``."""

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
        n, dim = fc.shape
        if n < dim:  # fewer samples than dimensions (2,048-d Inception features of a small set): S C S = GᵀG/(n−1)
            g = fc @ self.S  # with G = F_c S, whose nonzero eigenvalues are those of the n × n matrix G Gᵀ/(n−1)
            lam = torch.linalg.eigvalsh(g @ g.T / (n - 1)).clamp(min=0)
            tr_cov = float((fc * fc).sum()) / (n - 1)
        else:
            cov = fc.T @ fc / (n - 1)
            lam = torch.linalg.eigvalsh(self.S @ cov @ self.S).clamp(min=0)
            tr_cov = float(torch.trace(cov))
        d = mu - self.mu
        return float(d @ d + tr_cov + self.tr_ref - 2.0 * lam.sqrt().sum())


# From this feature dimension on, the point estimate too uses the eigenvalue identity of _FDToReference:
# scipy's sqrtm takes 15 s at D = 2,048 on one core of the 2-core build machine (11 s on both; once per cell
# and arm at gpu/paper), and the classifier features of ci/cpu (D ≤ 256) keep the sqrtm value they always had.
EIG_DIM = 512
_FD_REFS: dict = {}


def _fd_to_reference(f_ref, device) -> _FDToReference:
    """One :class:`_FDToReference` per reference and device (its eigendecomposition is D³: seconds at D = 2,048)."""
    key = (tuple(id(a) for a in f_ref) if isinstance(f_ref, tuple) else id(f_ref), str(device))
    if key not in _FD_REFS:
        _FD_REFS.clear()
        _FD_REFS[key] = (f_ref, _FDToReference(f_ref, device))  # keep f_ref alive so its id stays its own
    return _FD_REFS[key][1]


def _point_fd(f: np.ndarray, f_ref, fd_ref: _FDToReference) -> float:
    if f.shape[1] >= EIG_DIM:
        return fd_ref(torch.from_numpy(f).to(fd_ref.device))
    return fd_from_features(f, f_ref)


def _percentiles(x: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(x, [a, 1.0 - a])
    return float(lo), float(hi)


def _boot_fds(f: np.ndarray, fd_ref: _FDToReference, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """The bootstrap FDs, one thread on a CPU: each replicate is a few small products and one eigvalsh, so
    a second thread brings only synchronisation, and beside another busy process its spin-waits made
    the replicates 15x slower (bench/results/boot_threads.md). The same bits either way."""
    ft = torch.from_numpy(f).to(fd_ref.device)
    out = np.empty(n_boot)
    with single_thread() if fd_ref.device.type == "cpu" else contextlib.nullcontext():
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
    f_ref = fd_reference(f_ref)
    f_ref = f_ref if isinstance(f_ref, tuple) else _as_features(f_ref)
    fd_ref = _fd_to_reference(f_ref, device)
    boots = _boot_fds(f_gen, fd_ref, n_boot, np.random.default_rng(seed))
    value = _point_fd(f_gen, f_ref, fd_ref)
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
    f_ref = fd_reference(f_ref)
    f_ref = f_ref if isinstance(f_ref, tuple) else _as_features(f_ref)
    fd_ref = _fd_to_reference(f_ref, device)
    if paired and len(f_a) != len(f_b):
        raise ValueError(f"paired comparison needs equally many samples per arm, got {len(f_a)} and {len(f_b)}")
    rng_a, rng_b = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if paired:  # the same generator state for both arms: identical index draws
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    ba, bb = _boot_fds(f_a, fd_ref, n_boot, rng_a), _boot_fds(f_b, fd_ref, n_boot, rng_b)
    fa, fb = _point_fd(f_a, f_ref, fd_ref), _point_fd(f_b, f_ref, fd_ref)
    diff, rel = ba - bb, (ba - bb) / ba
    # Bias-corrected percentile intervals, as in fd_bootstrap: resampling biases both FDs upwards,
    # and the shift re-centres each interval on its full-sample estimate.
    d_lo, d_hi = (q - (diff.mean() - (fa - fb)) for q in _percentiles(diff, level))
    r_lo, r_hi = (q - (rel.mean() - (fa - fb) / fa) for q in _percentiles(rel, level))
    return dict(fd_a=fa, fd_b=fb, diff=fa - fb, diff_lo=d_lo, diff_hi=d_hi, diff_std=float(diff.std(ddof=1)),
                rel=(fa - fb) / fa, rel_lo=r_lo, rel_hi=r_hi, excludes_zero=bool(d_lo > 0 or d_hi < 0),
                n_a=len(f_a), n_b=len(f_b), n_boot=n_boot, level=level, paired=paired)


# ---------------------------------------------------------------------------- KID (unbiased MMD²)
def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The cubic polynomial kernel of KID, k(x, y) = (x·y/d + 1)³, d the feature dimension."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _offdiag_sum(f: np.ndarray, chunk: int = 1000) -> float:
    """Σ_{i≠j} k(f_i, f_j) without holding the full [N, N] kernel matrix."""
    total = 0.0
    for s in range(0, len(f), chunk):
        k = polynomial_kernel(f[s:s + chunk], f)
        total += k.sum() - np.einsum("ii->", k[:, s:s + chunk])
    return float(total)


class KIDToReference:
    """KID of feature sets against one fixed reference set Y (m samples), its kernel term computed once.

    KID is the unbiased estimator of the squared MMD with the cubic polynomial kernel (Bińkowski et
    al. 2018; clean-fid's ``kernel_distance`` on the whole sets):

        MMD²_u = Σ_{i≠j} k(x_i, x_j)/(n(n−1)) + Σ_{i≠j} k(y_i, y_j)/(m(m−1)) − 2 Σ_{i,j} k(x_i, y_j)/(nm).

    Unlike the Fréchet distance it has no small-sample bias: its expectation is the population MMD²
    (0 when both samples come from one distribution), at every n ≥ 2, so it can be negative."""

    def __init__(self, f_ref):
        f_ref = kid_reference(f_ref)
        if f_ref is None:
            raise ValueError("KID needs the reference *features*, not (μ, Σ): it is only measured where the "
                             "reference features are stored (eval.metric=classifier)")
        self.ref = _as_features(f_ref)
        m = len(self.ref)
        self.term_yy = _offdiag_sum(self.ref) / (m * (m - 1))

    def parts(self, f) -> tuple[np.ndarray, np.ndarray]:
        """K_xx with a zero diagonal [n, n] and r_i = mean_j k(x_i, y_j) [n], the pieces of :meth:`__call__`."""
        f = _as_features(f)
        if f.shape[1] != self.ref.shape[1]:
            raise ValueError(f"KID: features have dimension {f.shape[1]}, the reference {self.ref.shape[1]}")
        kxx = polynomial_kernel(f, f)
        np.fill_diagonal(kxx, 0.0)
        r = np.concatenate([polynomial_kernel(f[s:s + 1000], self.ref).mean(1) for s in range(0, len(f), 1000)])
        return kxx, r

    def __call__(self, f) -> float:
        kxx, r = self.parts(f)
        n = len(kxx)
        return float(kxx.sum() / (n * (n - 1)) + self.term_yy - 2.0 * r.mean())


def kid(f_gen, f_ref) -> float:
    """KID (unbiased MMD², cubic polynomial kernel) between two feature sets [N, D], float64."""
    return KIDToReference(f_ref)(f_gen)


def kid_bootstrap(f_gen, f_ref, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                  kid_ref: KIDToReference | None = None) -> dict:
    """KID with a percentile bootstrap interval over the generated samples (the reference fixed).

    A resample is a vector of multiplicities c (multinomial, Σc = n). Its KID uses the pairs of
    *distinct* original samples only, Σ_{i≠j} c_i c_j k_ij / (n² − Σ c_i²), so duplicated samples do
    not bias the replicates upwards (the Fréchet distance's bootstrap needs a bias correction; this
    one does not) and c = 1 gives the full-sample estimate exactly. Returns value, lo, hi, std, n,
    n_boot, level."""
    kr = kid_ref or KIDToReference(f_ref)
    kxx, r = kr.parts(f_gen)
    n = len(kxx)
    value = float(kxx.sum() / (n * (n - 1)) + kr.term_yy - 2.0 * r.mean())
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for s in range(0, n_boot, 250):  # blocks of replicates: one [B, n] @ [n, n] product each
        c = rng.multinomial(n, np.full(n, 1.0 / n), size=min(250, n_boot - s)).astype(np.float64)
        pairs = n * n - (c * c).sum(1)
        boots[s:s + len(c)] = ((c @ kxx) * c).sum(1) / pairs + kr.term_yy - 2.0 * (c @ r) / n
    lo, hi = _percentiles(boots, level)
    return dict(value=value, lo=lo, hi=hi, std=float(boots.std(ddof=1)), n=n, n_boot=n_boot, level=level)
