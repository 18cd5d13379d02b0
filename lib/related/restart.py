"""EDM's Heun sampler and Restart sampling (Xu et al., NeurIPS 2023, arXiv 2306.14878) on the VP schedule.

Both run on an EDM grid (ρ = 7, :func:`lib.transfer.edm_times`) handed to them as (t, t') pairs,
fractional times t_i = schedule.t_from_sigma(σ_i) with the last step to t = −1 (σ = 0):

* ``edm`` (default): σ from min(80, σ(T−1)) = 80 to 0.002, the released Restart code's CIFAR-10 VP grid;
* ``edm-full``: σ(T−1) = 157.4 to σ(0) = 0.01 (t from T−1 to 0), this project's grid before the EDM grid became the default (docs/method.md §8.1).

In y = x/√ᾱ the probability-flow ODE is dy/dσ = ε, and the DDIM transfer φ is its exact Euler step;
**Heun** (EDM Algorithm 1) takes e₁ = ε(x, t_i), e₂ = ε(φ(x, e₁, t_i→t_{i+1}), t_{i+1}),
x ← φ(x, (e₁ + e₂)/2, t_i→t_{i+1}), and a plain Euler step to σ = 0: NFE = 2N − 1.

**Restart** (Xu et al. Algorithm 1) runs the same main pass; on reaching the grid point nearest to
``sigma_min`` (σ_lo; the released code rounds t_min to the main grid the same way: 0.06 → 0.0599 on
the ``edm`` grid) it repeats K times: a forward jump to σ_hi = ``sigma_max`` (exact, no rounding),

    x ← √(ᾱ_hi/ᾱ_lo) x + √(1 − ᾱ_hi/ᾱ_lo) s_noise ξ        (= y + √(σ_hi² − σ_lo²) s_noise ξ in y),

then Heun back down to σ_lo on an EDM grid of N_R points, each step with the released code's churn
(EDM Algorithm 2 inside the restart interval): where s_min ≤ σ_i ≤ s_max, first raise the noise to
σ̂ = (1 + γ)σ_i by the same exact jump, then take the Heun step from σ̂ to σ_{i+1}. NFE = 2N − 1 +
K·2(N_R − 1) (churn costs no evaluation). Defaults: the released CIFAR-10 VP setting (N_R = 3, K = 2,
[σ_min, σ_max] = [0.06, 0.30], γ = 0.05, s_min = 0.01, s_max = 1, s_noise = 1). Before the reshaping of
docs/method.md §8.1 this project ran ``grid="edm-full", gamma=0`` (still reachable: those options).

``num_steps`` is N. lib.samplers registers ``heun`` and ``restart`` (grids ``edm``, ``edm-full``).
"""
from __future__ import annotations

import inspect
import math

import torch

# Shared with the other solvers: the DDIM transfer φ with float64 coefficients and the EDM grid (lib.transfer).
from lib.transfer import apply_ddim, ddim_from_ab, edm_sigmas, edm_times, noise_like, progress_iter, time_tensor
from lib.schedule import Schedule

__all__ = ["nfe_heun", "nfe_restart", "edm_sigmas", "heun_times", "heun_pass", "jump_coefficients", "restart_jump",
           "heun", "restart", "RELEASED"]



def heun_times(schedule: Schedule, num_steps: int, rho: float = 7.0, grid: str = "edm-full") -> torch.Tensor:
    """The N main-pass times of an EDM grid (default ``edm-full``: T−1 down to 0; see lib.transfer.edm_times)."""
    return edm_times(schedule, num_steps, grid, rho)


def _ab(schedule: Schedule, t: float) -> float:
    # ᾱ one time at a time: a value must not depend on which other times share its tensor (vectorised
    # and scalar exp can differ in the last bit), so a split pass (Restart, K = 0) equals one whole pass.
    return float(schedule.alpha_bar(torch.tensor(float(t), dtype=torch.float64)))


def heun_pass(eps_model, x: torch.Tensor, schedule: Schedule, times, *, progress: bool = False,
              churn: tuple | None = None, generator=None) -> torch.Tensor:
    """Integrate the probability-flow ODE along ``times`` (descending) with Heun's method in σ.

    Every step uses the second-order correction except a final step to t = −1 (σ = 0), which is an
    Euler step as in EDM (ε at σ = 0 is undefined). 2 evaluations per step, 1 for that last one.
    ``churn = (γ, s_min, s_max, s_noise)``: EDM Algorithm 2's noise increase before each step whose σ_i
    lies in [s_min, s_max] (γ = 0: none, and no noise is drawn)."""
    ts = [float(t) for t in times]
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"times must be strictly decreasing, got {ts}")
    ab = {t: _ab(schedule, t) for t in ts}
    gamma, s_min, s_max, s_noise = churn if churn is not None else (0.0, 0.0, 0.0, 1.0)
    for t, tn in progress_iter(list(zip(ts, ts[1:])), progress, "heun"):
        t_hat = t
        if gamma > 0 and s_min <= math.sqrt((1 - ab[t]) / ab[t]) <= s_max:
            # EDM Alg. 2: σ̂ = (1 + γ) σ_i, x̂ = x + √(σ̂² − σ_i²) S_noise z (in y), here the exact VP jump t → t̂
            t_hat = float(schedule.t_from_sigma(torch.tensor((1 + gamma) * math.sqrt((1 - ab[t]) / ab[t]),
                                                             dtype=torch.float64)))
            x = restart_jump(x, schedule, t, t_hat, generator, scale=s_noise)
            ab[t_hat] = _ab(schedule, t_hat)
        c = ddim_from_ab(ab[t_hat], ab[tn])  # φ(t̂ → t'): the Euler step y' = y + (σ' − σ̂) ε
        e1 = eps_model(x, time_tensor(t_hat, x))  # d_i = ε_θ(x̂, t̂)
        if tn <= -1:  # to σ = 0 (t = −1): Euler (EDM Alg. 1: no correction at the last step)
            x = apply_ddim(x, e1, c)
            continue
        e2 = eps_model(apply_ddim(x, e1, c), time_tensor(tn, x))  # d'_i = ε_θ(Euler prediction, t')
        x = apply_ddim(x, (e1 + e2) / 2, c)  # second-order correction: x' = φ(x̂, (d_i + d'_i)/2, t̂ → t')
    return x


def jump_coefficients(schedule: Schedule, t_lo: float, t_hi: float) -> tuple[float, float]:
    """(a, b) of the exact forward jump x_hi = a x_lo + b ξ: a = √(ᾱ_hi/ᾱ_lo), b = √(1 − ᾱ_hi/ᾱ_lo)."""
    if not t_hi > t_lo:
        raise ValueError(f"a forward jump needs t_hi > t_lo, got t_lo={t_lo}, t_hi={t_hi}")
    ab_lo, ab_hi = _ab(schedule, t_lo), _ab(schedule, t_hi)
    r = ab_hi / ab_lo
    return math.sqrt(r), math.sqrt(1.0 - r)


def restart_jump(x, schedule: Schedule, t_lo: float, t_hi: float, generator=None, noise=None, scale: float = 1.0):
    """Restart's forward jump from t_lo to t_hi, x ← a x + b·scale·ξ (:func:`jump_coefficients`)."""
    a, b = jump_coefficients(schedule, t_lo, t_hi)
    return x * a + (noise if noise is not None else noise_like(x, generator)) * (b * scale)


def _check_restart(schedule, n_r, k, sigma_min, sigma_max, gamma, s_min, s_max, s_noise):
    lo, hi = 0.0, float(schedule.sigma(schedule.T - 1))
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k (the number K of restarts) must be an integer >= 0, got {k!r}")
    if isinstance(n_r, bool) or not isinstance(n_r, int) or n_r < 2:
        raise ValueError(f"n_r (points N_R of each restart's Heun pass) must be an integer >= 2, got {n_r!r}")
    if not lo < sigma_min < sigma_max <= hi:
        raise ValueError(f"the restart interval needs 0 < sigma_min < sigma_max <= σ(T-1)={hi:.4g}, "
                         f"got [{sigma_min}, {sigma_max}]")
    if not (0.0 <= gamma <= math.sqrt(2) - 1) or not 0 <= s_min <= s_max or not s_noise >= 0:
        raise ValueError(f"churn needs 0 <= gamma <= √2−1 (EDM's bound), 0 <= s_min <= s_max and s_noise >= 0; got "
                         f"gamma={gamma}, s_min={s_min}, s_max={s_max}, s_noise={s_noise}")


def heun(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None):
    """EDM's deterministic Heun sampler (EDM Algorithm 1) on the N = len(pairs) points of its grid (NFE 2N − 1)."""
    times = [t for t, _ in pairs] + [pairs[-1][1]]
    return heun_pass(eps_model, x_T, schedule, times, progress=progress)


# restart()'s defaults are the released code's CIFAR-10 VP setting (N_R, K, [t_min, t_max], restart_gamma,
# S_min, S_max, S_noise), written there only: lib.samplers reads a method's options from its signature.
def restart(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None, n_r: int = 3, k: int = 2,
            sigma_min: float = 0.06, sigma_max: float = 0.30, gamma: float = 0.05, s_min: float = 0.01,
            s_max: float = 1.0, s_noise: float = 1.0):
    """Restart sampling (Xu et al. Algorithm 1): Heun's main pass with K restarts of [sigma_min, sigma_max]
    (module docstring). ``info`` receives ``restart_index`` (grid point) and ``restart_times``."""
    _check_restart(schedule, n_r, k, sigma_min, sigma_max, gamma, s_min, s_max, s_noise)
    times = [t for t, _ in pairs] + [pairs[-1][1]]  # main grid, ending at t = −1 (σ = 0)
    sig = torch.cat([schedule.sigma(torch.tensor(times[:-1], dtype=torch.float64)), torch.zeros(1, dtype=torch.float64)])
    j = int(torch.argmin((sig - sigma_min).abs()))  # t_min rounded to the nearest main-grid point, as released
    if j == 0 or j == len(pairs):
        raise ValueError(f"sigma_min={sigma_min} falls on the first or the last (σ = 0) point of a "
                         f"{len(pairs)}-point grid; use more steps or a larger sigma_min")
    if not sigma_max > float(sig[j]):
        raise ValueError(f"sigma_max={sigma_max} must exceed the restart point's σ = {float(sig[j]):.4g}")
    inner = schedule.t_from_sigma(edm_sigmas(sigma_max, float(sig[j]), n_r)).tolist()  # σ_hi exact
    inner[-1] = times[j]  # the restart pass returns exactly to the main grid point
    if info is not None:
        info.update(restart_index=j, restart_times=inner)
    x = heun_pass(eps_model, x_T, schedule, times[:j + 1], progress=progress)  # main pass down to σ_lo
    for _ in range(k):
        # forward: x_{t_max} = x_{t_min} + ε_{t_min→t_max} (exact in VP terms)
        x = restart_jump(x, schedule, inner[-1], inner[0], generator, scale=s_noise)
        # backward: Heun from t_max to t_min on N_R points, with the released code's churn
        x = heun_pass(eps_model, x, schedule, inner, churn=(gamma, s_min, s_max, s_noise), generator=generator)
    return heun_pass(eps_model, x, schedule, times[j:], progress=progress)  # the rest of the main pass


def nfe_heun(schedule, pairs) -> int:
    """Heun's NFE: 2N − 1 (the last step to σ = 0 is a plain Euler step)."""
    return 2 * len(pairs) - 1


RELEASED = {p.name: p.default for p in inspect.signature(restart).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("generator", "progress", "info")}


def nfe_restart(schedule, pairs, *, n_r, k, sigma_min, sigma_max, gamma, s_min, s_max, s_noise):
    """Restart's NFE: 2N − 1 + K·2(N_R − 1) (lib.samplers passes every option, defaults filled in)."""
    _check_restart(schedule, n_r, k, sigma_min, sigma_max, gamma, s_min, s_max, s_noise)
    return 2 * len(pairs) - 1 + k * 2 * (n_r - 1)
