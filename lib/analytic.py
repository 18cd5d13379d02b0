"""Exact ε-predictors and probability-flow solutions for data with a known density.

With x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, the optimal ε-model is E[ε | x_t]. For Gaussian data and
isotropic Gaussian mixtures it has a closed form, so samplers, losses and the S²-DM shrinkage optimum
can be checked against exact answers.

Gaussian data N(0, s² I): x_t ~ N(0, v_t I) with v_t = ᾱ_t s² + 1 - ᾱ_t, and
    E[ε | x_t] = √(1-ᾱ_t) x_t / v_t.
The probability-flow ODE in y = x/√ᾱ, σ = √((1-ᾱ)/ᾱ) is dy/dσ = E[ε | x] = σ y/(s² + σ²), so
d log y = ½ d log(s² + σ²): y/√(s² + σ²) = x_t/√v_t is conserved along the flow and
    x_{t_to} = x_{t_from} √(v_{t_to}/v_{t_from})        (t_to = -1: ᾱ = 1, v = s², gives x_0).
"""
from __future__ import annotations

import torch

from lib.schedule import Schedule

__all__ = ["gaussian_eps", "gaussian_ode_solution", "gmm_eps", "gmm_sample"]


def _alpha_bar_like(schedule: Schedule, t, x: torch.Tensor) -> torch.Tensor:
    """ᾱ_t (float64 → x's dtype/device) shaped to broadcast against x: [N, 1, ...] or a scalar."""
    t = torch.as_tensor(t, dtype=torch.float64)
    ab = schedule.alpha_bar(t.cpu()).to(device=x.device, dtype=x.dtype)
    if ab.ndim == 0:
        return ab
    if ab.ndim != 1 or ab.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a scalar or a tensor [N] with N={x.shape[0]}, got shape {tuple(ab.shape)}")
    return ab.view(-1, *([1] * (x.ndim - 1)))


def gaussian_eps(x: torch.Tensor, t, schedule: Schedule, s: float) -> torch.Tensor:
    """The optimal ε for data N(0, s² I): √(1-ᾱ_t) x / (ᾱ_t s² + 1 - ᾱ_t); t scalar or [N], fractional ok."""
    ab = _alpha_bar_like(schedule, t, x)
    return torch.sqrt(1 - ab) * x / (ab * s**2 + 1 - ab)


def gaussian_ode_solution(x_T: torch.Tensor, t_from, t_to, schedule: Schedule, s: float) -> torch.Tensor:
    """The exact probability-flow map from t_from to t_to for data N(0, s² I): x √(v_to / v_from).

    v_t = ᾱ_t s² + 1 - ᾱ_t; t_to = -1 gives x_0. Times are scalars or tensors [N].
    """
    ab_from, ab_to = _alpha_bar_like(schedule, t_from, x_T), _alpha_bar_like(schedule, t_to, x_T)
    v_from, v_to = ab_from * s**2 + 1 - ab_from, ab_to * s**2 + 1 - ab_to
    return x_T * torch.sqrt(v_to / v_from)


def _check_gmm(means, std, weights, d):
    means = torch.as_tensor(means)
    if means.ndim != 2 or means.shape[1] != d:
        raise ValueError(f"means must be [K, d] with d={d} (the flattened size of one sample), got {tuple(means.shape)}")
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (means.shape[0],) or not bool((weights > 0).all()):
        raise ValueError(f"weights must be [K]={means.shape[0]} positive numbers, got shape {tuple(weights.shape)}")
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    return means, weights / weights.sum()


def gmm_eps(x: torch.Tensor, t, schedule: Schedule, means, std: float, weights) -> torch.Tensor:
    """Exact E[ε | x_t] for data Σ_k w_k N(μ_k, std² I) in d dims (x [N, ...] flattens to [N, d]).

    Given component k, x_t ~ N(√ᾱ μ_k, v I) with v = ᾱ std² + 1 - ᾱ (the same v for every k) and
    E[ε | x_t, k] = √(1-ᾱ)(x_t - √ᾱ μ_k)/v. Responsibilities r_k ∝ w_k exp(-|x_t - √ᾱ μ_k|²/(2v))
    are computed with a softmax (log-sum-exp), so far-away x_t does not underflow.
    """
    xf = x.reshape(x.shape[0], -1)
    means, weights = _check_gmm(means, std, weights, xf.shape[1])
    means = means.to(device=x.device, dtype=x.dtype)
    ab = _alpha_bar_like(schedule, t, xf)  # [N, 1] or scalar
    v = ab * std**2 + 1 - ab
    diff = xf[:, None, :] - torch.sqrt(ab)[..., None] * means[None, :, :]  # [N, K, d]
    logits = torch.log(weights).to(device=x.device, dtype=x.dtype)[None, :] - (diff**2).sum(-1) / (2 * v)
    r = torch.softmax(logits, dim=1)  # [N, K]
    eps = torch.sqrt(1 - ab) / v * (r[..., None] * diff).sum(1)
    return eps.reshape(x.shape)


def gmm_sample(n: int, means, std: float, weights, generator: torch.Generator | None = None,
               dtype=torch.float64) -> torch.Tensor:
    """n draws [n, d] from Σ_k w_k N(μ_k, std² I)."""
    means = torch.as_tensor(means, dtype=dtype)
    means, weights = _check_gmm(means, std, weights, means.shape[1])
    k = torch.multinomial(weights, n, replacement=True, generator=generator)
    return means[k] + std * torch.randn(n, means.shape[1], generator=generator, dtype=dtype)
