"""EDM's Heun sampler and Restart sampling (Xu et al., NeurIPS 2023, arXiv 2306.14878) on the VP schedule.

Both work on EDM's σ grid (ρ = 7) between the schedule's own σ_max = σ(T−1) and σ_min = σ(0),

    σ_i = (σ_max^{1/ρ} + i/(N−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,  i = 0 … N−1,  then σ_N = 0,

converted to fractional times t_i = schedule.t_from_sigma(σ_i) (t_0 = T−1, t_{N−1} = 0, t_N = −1).
In y = x/√ᾱ the probability-flow ODE is dy/dσ = ε, and the DDIM transfer φ is its exact Euler step;
**Heun** (EDM Algorithm 1 without churn) takes e₁ = ε(x, t_i), e₂ = ε(φ(x, e₁, t_i→t_{i+1}), t_{i+1}),
x ← φ(x, (e₁ + e₂)/2, t_i→t_{i+1}), and a plain Euler step to σ = 0: NFE = 2N − 1.

**Restart** runs the same main pass; on reaching the grid point nearest to ``sigma_min`` (σ_lo, as the
released code picks it) it repeats K times: a forward jump to σ_hi = ``sigma_max``, exact in VP terms,

    x ← √(ᾱ_hi/ᾱ_lo) x + √(1 − ᾱ_hi/ᾱ_lo) ξ        (= y + √(σ_hi² − σ_lo²) ξ in y),

then Heun back down to σ_lo on an EDM grid of N_R points: NFE = 2N − 1 + K·2(N_R − 1). The defaults
are the paper's CIFAR-10 VP setting (N_R = 3, K = 2, [σ_min, σ_max] = [0.06, 0.30], t ≈ 14 … 88 here).
The restart backward pass is the pure ODE (the released code optionally adds a small churn; not used).

The ``grid`` argument of :func:`lib.samplers.sample` does not apply (always the EDM grid);
``num_steps`` is N. lib.samplers registers ``heun`` and ``restart``.
"""
from __future__ import annotations

import math

import torch

# Shared with the other solvers: the DDIM transfer φ with float64 coefficients (lib.transfer).
from lib.transfer import apply_ddim, ddim_from_ab, progress_iter, time_tensor
from lib.schedule import Schedule

__all__ = ["nfe_heun", "nfe_restart", "edm_sigmas", "heun_times", "heun_pass", "jump_coefficients", "restart_jump", "heun", "restart"]


def edm_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """EDM's noise levels (EDM eq. 5): n values from sigma_max down to sigma_min, float64."""
    if n < 1 or not 0 < sigma_min <= sigma_max or rho <= 0:
        raise ValueError(f"need n >= 1, 0 < sigma_min <= sigma_max and rho > 0; got n={n}, "
                         f"sigma_min={sigma_min}, sigma_max={sigma_max}, rho={rho}")
    if n == 1:
        return torch.tensor([float(sigma_max)], dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    s = (a + i / (n - 1) * (b - a)) ** rho
    s[0], s[-1] = sigma_max, sigma_min  # exact endpoints
    return s


def heun_times(schedule: Schedule, num_steps: int, rho: float = 7.0) -> torch.Tensor:
    """The N main-pass times t_i (fractional, float64) from T−1 down to 0, EDM-spaced in σ."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps (the number N of EDM grid points) must be a positive integer, got {num_steps!r}")
    s_max, s_min = float(schedule.sigma(schedule.T - 1)), float(schedule.sigma(0))
    t = schedule.t_from_sigma(edm_sigmas(s_max, s_min, num_steps, rho)).clamp(0.0, schedule.T - 1)
    t[0] = schedule.T - 1
    if num_steps > 1:
        t[-1] = 0.0
    return t


def heun_pass(eps_model, x: torch.Tensor, schedule: Schedule, times, *, progress: bool = False) -> torch.Tensor:
    """Integrate the probability-flow ODE along ``times`` (descending) with Heun's method in σ.

    Every step uses the second-order correction except a final step to t = −1 (σ = 0), which is an
    Euler step as in EDM (ε at σ = 0 is undefined). 2 evaluations per step, 1 for that last one."""
    ts = [float(t) for t in times]
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"times must be strictly decreasing, got {ts}")
    # ᾱ one time at a time: a value must not depend on which other times share its tensor (vectorised
    # and scalar exp can differ in the last bit), so a split pass (Restart, K = 0) equals one whole pass.
    ab = {t: float(schedule.alpha_bar(torch.tensor(t, dtype=torch.float64))) for t in ts}
    for t, tn in progress_iter(list(zip(ts, ts[1:])), progress, "heun"):
        c = ddim_from_ab(ab[t], ab[tn])
        e1 = eps_model(x, time_tensor(t, x))
        if tn < 0:  # to σ = 0: Euler
            x = apply_ddim(x, e1, c)
            continue
        e2 = eps_model(apply_ddim(x, e1, c), time_tensor(tn, x))
        x = apply_ddim(x, (e1 + e2) / 2, c)
    return x


def jump_coefficients(schedule: Schedule, t_lo: float, t_hi: float) -> tuple[float, float]:
    """(a, b) of the exact forward jump x_hi = a x_lo + b ξ: a = √(ᾱ_hi/ᾱ_lo), b = √(1 − ᾱ_hi/ᾱ_lo)."""
    if not t_hi > t_lo:
        raise ValueError(f"a forward jump needs t_hi > t_lo, got t_lo={t_lo}, t_hi={t_hi}")
    ab_lo, ab_hi = schedule.alpha_bar(torch.tensor([t_lo, t_hi], dtype=torch.float64)).tolist()
    r = ab_hi / ab_lo
    return math.sqrt(r), math.sqrt(1.0 - r)


def _noise(x, generator):
    # Drawn on the generator's device, then moved: the same seed gives the same noise on CPU and GPU.
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def restart_jump(x, schedule: Schedule, t_lo: float, t_hi: float, generator=None, noise=None):
    """Restart's forward jump from t_lo to t_hi, x ← a x + b ξ (:func:`jump_coefficients`)."""
    a, b = jump_coefficients(schedule, t_lo, t_hi)
    return x * a + (noise if noise is not None else _noise(x, generator)) * b


def _check_restart(schedule, n_r, k, sigma_min, sigma_max):
    lo, hi = float(schedule.sigma(0)), float(schedule.sigma(schedule.T - 1))
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k (the number K of restarts) must be an integer >= 0, got {k!r}")
    if isinstance(n_r, bool) or not isinstance(n_r, int) or n_r < 2:
        raise ValueError(f"n_r (points N_R of each restart's Heun pass) must be an integer >= 2, got {n_r!r}")
    if not lo <= sigma_min < sigma_max <= hi:
        raise ValueError(f"the restart interval needs σ(0)={lo:.4g} <= sigma_min < sigma_max <= σ(T-1)={hi:.4g}, "
                         f"got [{sigma_min}, {sigma_max}]")


def heun(eps_model, x_T, schedule, num_steps, grid, *, generator=None, progress=False, info=None,
         rho: float = 7.0):
    """EDM's deterministic Heun sampler on N = ``num_steps`` EDM grid points (NFE 2N − 1)."""
    times = heun_times(schedule, num_steps, rho).tolist() + [-1.0]
    if info is not None:
        info["timesteps"] = times[:-1]
    return heun_pass(eps_model, x_T, schedule, times, progress=progress)


def restart(eps_model, x_T, schedule, num_steps, grid, *, generator=None, progress=False, info=None,
            rho: float = 7.0, n_r: int = 3, k: int = 2, sigma_min: float = 0.06, sigma_max: float = 0.30):
    """Restart sampling: Heun's main pass with K restarts of the interval [sigma_min, sigma_max]
    (module docstring). ``info`` receives ``restart_index`` (grid point), ``restart_times``."""
    _check_restart(schedule, n_r, k, sigma_min, sigma_max)
    main = heun_times(schedule, num_steps, rho)
    sig = torch.cat([schedule.sigma(main), torch.zeros(1, dtype=torch.float64)])
    j = int(torch.argmin((sig - sigma_min).abs()))  # the grid point where the restarts happen
    if j == 0 or j == num_steps:
        raise ValueError(f"sigma_min={sigma_min} falls on the first or the last (σ = 0) grid point of a "
                         f"{num_steps}-point grid; use more steps or a larger sigma_min")
    inner = schedule.t_from_sigma(edm_sigmas(sigma_max, float(sig[j]), n_r, rho)).tolist()
    inner[-1] = float(main[j])  # the restart pass returns exactly to the main grid point
    if info is not None:
        info.update(timesteps=main.tolist(), restart_index=j, restart_times=inner)
    times = main.tolist() + [-1.0]
    x = heun_pass(eps_model, x_T, schedule, times[:j + 1], progress=progress)
    for _ in range(k):
        x = restart_jump(x, schedule, inner[-1], inner[0], generator)
        x = heun_pass(eps_model, x, schedule, inner)
    return heun_pass(eps_model, x, schedule, times[j:], progress=progress)


def nfe_heun(schedule, num_steps, grid, rho=7.0) -> int:
    """Heun's NFE: 2N − 1 (the last step to σ = 0 is a plain Euler step)."""
    return 2 * len(heun_times(schedule, num_steps, rho)) - 1


def nfe_restart(schedule, num_steps, grid, rho=7.0, n_r=3, k=2, sigma_min=0.06, sigma_max=0.30):
    """Restart's NFE: 2N − 1 + K·2(N_R − 1)."""
    _check_restart(schedule, n_r, k, sigma_min, sigma_max)
    heun_times(schedule, num_steps, rho)
    return 2 * num_steps - 1 + k * 2 * (n_r - 1)

