"""Epsilon scaling (Ning et al. 2023, *Elucidating the Exposure Bias in Diffusion Models*), and the
scaling that S²-DM's loss implies.

At sampling time the prediction is divided by a factor λ_t slightly above 1:

    ε̃(x, t) = ε_θ(x, t) / λ_t.

Schedules of λ_t (each a callable ``t -> λ_t``, float64, t on the 0..T−1 scale, fractional allowed):

* :class:`Constant` ``b``: λ_t = b (the form Ning et al. use by default, "k = 0").
* :class:`Linear` ``b, k``: λ_t = b + k·(t/(T−1) − ½). This is Ning et al.'s "kt + b" in the form of
  their released code (start = b − k'(T−1)/2, slope k' per step: the *mean* of λ over t is b), with
  the slope k written as the total change of λ from t = 0 to t = T−1 so that it reads on the scale of
  b; k > 0 scales the noisy end more, k < 0 the clean end.
* :class:`ImpliedS2DM` ``skip, tau``: λ_t = 1/shrinkage_t = (τ + (1−τ)c_t²)/τ, c_t² = (1−α_skip)/α_skip
  (docs/method.md §1): the optimum of S²-DM's loss is τ/(τ + (1−τ)c_t²)·E[ε | x_t], so a perfectly trained
  S²-DM equals a perfectly trained baseline divided by this λ_t. Applied to a baseline it mimics
  S²-DM's optimum without training (λ_t = 1 for t < skip, where S²-DM uses plain L_0).
* :class:`ImpliedIP` ``gamma, sigma2``: λ_t = 1 + γ²(1−ᾱ_t)/(ᾱ_t σ² + 1 − ᾱ_t) (docs/method.md §1b): the factor
  by which DDPM-IP's optimum (input ε + γξ, target ε) shrinks the clean optimum when the data are Gaussian
  with per-coordinate variance σ² (isotropic). Unlike S²-DM's, this one holds only under that assumption.

λ ≡ 1 returns the model's output unchanged (division by 1.0 is exact).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lib.schedule import Schedule

__all__ = ["Constant", "Linear", "ImpliedS2DM", "ImpliedIP", "EpsScaled", "implied_s2dm", "implied_ip"]


def _number(name, v, positive=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name} must be a finite {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Constant:
    """λ_t = b."""

    b: float = 1.0

    def __post_init__(self):
        _number("b", self.b, positive=True)

    def __call__(self, t) -> torch.Tensor:
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), float(self.b))

    @property
    def label(self) -> str:
        return f"es({self.b:g})"


@dataclass(frozen=True)
class Linear:
    """λ_t = b + k·(t/(T−1) − ½): mean b over t, total change k from t = 0 to t = T−1."""

    b: float = 1.0
    k: float = 0.0
    T: int = 1000

    def __post_init__(self):
        _number("b", self.b, positive=True)
        _number("k", self.k)
        if abs(self.k) / 2 >= self.b:
            raise ValueError(f"|k|/2 must be below b so that λ_t stays positive, got b={self.b}, k={self.k}")
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 2:
            raise ValueError(f"T must be an integer >= 2, got {self.T!r}")

    def __call__(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.b + self.k * (t / (self.T - 1) - 0.5)

    @property
    def label(self) -> str:
        return f"es({self.b:g},k={self.k:g})"


@dataclass(frozen=True)
class ImpliedS2DM:
    """λ_t = 1/schedule.shrinkage(t, skip, tau): the factor by which S²-DM's optimum shrinks ε."""

    schedule: Schedule
    skip: int = 9
    tau: float = 0.99

    def __post_init__(self):
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1] (tau = 0 has no finite factor), got {self.tau}")
        if not 1 <= self.skip < self.schedule.T:
            raise ValueError(f"skip must satisfy 1 <= skip < T={self.schedule.T}, got {self.skip}")

    def __call__(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return 1.0 / self.schedule.shrinkage(t.cpu(), self.skip, self.tau).to(t.device)

    @property
    def label(self) -> str:
        return f"implied-s2dm(skip={self.skip},tau={self.tau:g})"


def implied_s2dm(schedule: Schedule, skip: int = 9, tau: float = 0.99) -> ImpliedS2DM:
    """The λ_t schedule 1/shrinkage(t, skip, tau) that makes a baseline mimic S²-DM's optimum."""
    return ImpliedS2DM(schedule, skip, tau)


@dataclass(frozen=True)
class ImpliedIP:
    """λ_t = 1 + γ²(1−ᾱ_t)/(ᾱ_t σ² + 1 − ᾱ_t): DDPM-IP's optimum is the clean one divided by λ_t for
    isotropic Gaussian data of per-coordinate variance ``sigma2`` (docs/method.md §1b); λ ∈ [1, 1 + γ²]."""

    schedule: Schedule
    gamma: float = 0.1
    sigma2: float = 1.0

    def __post_init__(self):
        if _number("gamma", self.gamma) < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        _number("sigma2", self.sigma2, positive=True)

    def __call__(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        a = self.schedule.alpha_bar(t.cpu(), check=False).to(torch.float64).to(t.device)
        return 1.0 + self.gamma ** 2 * (1 - a) / (a * self.sigma2 + 1 - a)

    @property
    def label(self) -> str:
        return f"implied-ip(gamma={self.gamma:g},sigma2={self.sigma2:.4g})"


def implied_ip(schedule: Schedule, gamma: float = 0.1, sigma2: float = 1.0) -> ImpliedIP:
    """The λ_t schedule that makes a baseline mimic DDPM-IP's Gaussian-data optimum at γ."""
    return ImpliedIP(schedule, gamma, sigma2)


class EpsScaled:
    """The ε-model ``eps_model(x, t) / λ_t`` (λ computed in float64, cast to the output's dtype)."""

    def __init__(self, eps_model, lam):
        if not callable(eps_model) or not callable(lam):
            raise TypeError("EpsScaled(eps_model, lam) needs a callable ε-model and a callable λ schedule "
                            "(Constant, Linear, ImpliedS2DM or any t -> λ_t)")
        self.eps_model, self.lam = eps_model, lam

    @property
    def label(self) -> str:
        return getattr(self.lam, "label", "es")

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        eps = self.eps_model(x, t)
        lam = self.lam(torch.as_tensor(t).detach()).to(device=eps.device, dtype=eps.dtype)
        if lam.ndim == 1:
            lam = lam.view(-1, *([1] * (eps.ndim - 1)))
        return eps / lam
