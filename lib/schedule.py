"""The discrete linear-β noise schedule of DDPM/DDIM, with fractional time.

Conventions follow the DDIM reference code (and hence the official S²-DM code):

* ``t`` is 0-indexed, ``t = 0 .. T-1``; ``betas[t]`` is β_{t+1} of the DDPM paper.
* ``alphas_bar[t] = ∏_{i<=t} (1 - betas[i])`` (float64).
* ``t = -1`` means "clean data": ᾱ_{-1} = 1. Samplers step to it on their last step.
* Fractional ``t`` interpolates log ᾱ linearly between integer times, so ᾱ is exact at
  integers, continuous and strictly decreasing (needed by σ↔t, Restart, CDM, Time-Shift).

σ(t) = √((1-ᾱ_t)/ᾱ_t) is the noise level of the equivalent variance-exploding process
x_t/√ᾱ_t = x_0 + σ(t) ε (EDM's VP↔VE correspondence).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lib.infra.config import DDIM_GRIDS  # the names of the grids Schedule.timesteps computes


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete noise schedule: ``betas`` and ``alphas_bar`` as float64 tensors of length T."""

    betas: torch.Tensor

    def __post_init__(self):
        b = torch.as_tensor(self.betas, dtype=torch.float64)
        if b.ndim != 1 or len(b) < 2 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a 1-D sequence of length >= 2 with values in (0, 1)")
        object.__setattr__(self, "betas", b)
        object.__setattr__(self, "alphas_bar", torch.cumprod(1.0 - b, 0))
        # log ᾱ on the extended grid t = -1, 0, ..., T-1 (log ᾱ_{-1} = 0): the interpolation knots.
        object.__setattr__(self, "_log_ab", torch.cat([b.new_zeros(1), torch.log(self.alphas_bar)]))

    # ------------------------------------------------------------------ basic quantities
    @property
    def T(self) -> int:
        return len(self.betas)

    def _knots(self, device) -> torch.Tensor:
        """log ᾱ on the extended grid, cached per device (avoids a host copy every step)."""
        key = str(device)
        cache = self.__dict__.setdefault("_knot_cache", {})
        if key not in cache:
            cache[key] = self._log_ab.to(device)
        return cache[key]

    def alpha_bar(self, t, check: bool = True) -> torch.Tensor:
        """ᾱ at (possibly fractional) t ∈ [-1, T-1]; exact at integers, log-linear in between.

        ``check=False`` skips the range check (it forces a device sync on GPU)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if check and bool(((t < -1) | (t > self.T - 1)).any()):
            raise ValueError(f"t must lie in [-1, {self.T - 1}], got min {t.min().item()} max {t.max().item()}")
        u = t + 1.0  # position on the extended grid
        lo = torch.clamp(torch.floor(u).long(), 0, self.T - 1)
        w = u - lo
        log_ab = self._knots(t.device)
        return torch.exp(log_ab[lo] * (1 - w) + log_ab[lo + 1] * w)

    def sigma(self, t) -> torch.Tensor:
        """σ(t) = √((1-ᾱ_t)/ᾱ_t), the VE noise level of x_t/√ᾱ_t."""
        ab = self.alpha_bar(t)
        return torch.sqrt((1.0 - ab) / ab)

    def t_from_sigma(self, sigma) -> torch.Tensor:
        """Inverse of :meth:`sigma` on [σ(-1)=0, σ(T-1)]: the fractional t with σ(t) = sigma."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        smax = float(self.sigma(self.T - 1))
        if bool(((sigma < 0) | (sigma > smax * (1 + 1e-12))).any()):
            raise ValueError(f"sigma must lie in [0, {smax:.4g}] for this schedule")
        target = -torch.log1p(sigma**2)  # log ᾱ of the wanted point
        knots = self._knots(sigma.device)  # strictly decreasing in t
        # searchsorted needs ascending order: use -log ᾱ.
        neg = -knots
        idx = torch.searchsorted(neg, -target).clamp(1, self.T)  # knots[idx-1] >= target >= knots[idx]
        a, b = knots[idx - 1], knots[idx]
        w = (a - target) / (a - b)
        return (idx - 1).to(torch.float64) + w - 1.0

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t/(1-ᾱ_t) = 1/σ(t)²."""
        ab = self.alpha_bar(t)
        return ab / (1.0 - ab)

    # ------------------------------------------------------------------ S²-DM quantities
    def alpha_skip(self, t, skip: int, check: bool = True) -> torch.Tensor:
        """α_skip(t) = ᾱ_t / ᾱ_{max(t-skip, 0)}: the product of α over the last ``skip`` steps.

        As in the official code, times with t < skip are clamped to index 0 (those samples are
        trained with plain L_0 anyway).
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.alpha_bar(t, check) / self.alpha_bar(torch.clamp(t - skip, min=0.0), check)

    def c_t(self, t, skip: int, check: bool = True) -> torch.Tensor:
        """c_t = √((1-α_skip)/α_skip), the factor on ε_θ in L_skip (docs/method.md §1).

        The paper's c_t; not EDM's c_skip, which is a different quantity (the skip weight of its denoiser)."""
        a = self.alpha_skip(t, skip, check)
        return torch.sqrt((1.0 - a) / a)

    def shrinkage(self, t, skip: int, tau: float) -> torch.Tensor:
        """The per-x_t optimum factor of τL_0+(1-τ)L_skip: ε* = τ/(τ+(1-τ)c_t²)·E[ε|x_t].

        Equal to 1 where t < skip (those samples use plain L_0)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        c2 = self.c_t(t, skip) ** 2
        f = tau / (tau + (1.0 - tau) * c2)
        return torch.where(t < skip, torch.ones_like(f), f)

    # ------------------------------------------------------------------ sampling grids
    def timesteps(self, num_steps: int, grid: str = "uniform") -> torch.Tensor:
        """The sampling times of the DDIM code, in descending order (int64).

        * ``uniform``: ``range(0, T, T // S)``. When S does not divide T this yields *more*
          than S times (e.g. S = 30 gives 31); the DDIM code does the same, so we keep it and
          every sampler reports the true NFE. S = 10 starts at t = 900, not 999.
        * ``quad``: ``int(linspace(0, √(0.8 T), S)²)``: starts at 0.8 T (t = 800 for T = 1000)
          and, for S ≥ 50, *repeats* small times (int() truncation), so some steps are
          no-ops that still cost a network evaluation. Kept as in the DDIM code for
          comparability with its published numbers.

        The step after the last (smallest) time goes to t = -1, i.e. ᾱ = 1.
        """
        if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        if num_steps > self.T:
            raise ValueError(f"num_steps={num_steps} exceeds T={self.T}")
        if grid == "uniform":
            seq = list(range(0, self.T, self.T // num_steps))
        elif grid == "quad":
            seq = [int(s) for s in np.linspace(0, np.sqrt(self.T * 0.8), num_steps) ** 2]
        else:
            raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(DDIM_GRIDS)}")
        return torch.tensor(seq[::-1], dtype=torch.int64)

    def step_pairs(self, num_steps: int, grid: str = "uniform") -> list[tuple[int, int]]:
        """(t, t_next) pairs of the reverse process, ending with t_next = -1."""
        ts = self.timesteps(num_steps, grid).tolist()
        return list(zip(ts, ts[1:] + [-1]))

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε  (DDPM eq. 4), ᾱ computed in float64 then cast."""
        ab = self.alpha_bar(t.detach().to(x0.device, torch.float64), check=False).to(x0.dtype)
        ab = ab.view(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """The DDPM linear schedule: β linear from ``beta_start`` to ``beta_end`` over T steps."""
    if T < 2:
        raise ValueError(f"T must be >= 2, got {T}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError("need 0 < beta_start <= beta_end < 1")
    return Schedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))
