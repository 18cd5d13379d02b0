"""The DDIM transfer φ and the per-grid coefficient tables that every solver builds on.

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1-ᾱ_{t'}-σ²) ε + σ z,   x̂_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t   (DDIM eq. 12, no clipping)

At η = 0 it is exact for a constant ε: in y = x/√ᾱ and σ(t) = √((1-ᾱ_t)/ᾱ_t) the probability-flow
ODE reads dy/dσ = ε, and φ is its Euler step y' = y + (σ' - σ) ε. DDIM, PNDM, DEIS (lib.samplers),
Time-Shift and Restart (lib.related) all step through :func:`apply_ddim` with coefficients from
:func:`ab_table`, so a neighbour at its trivial setting reproduces its base sampler bit for bit.
Coefficients are float64 (Python floats); tensor arithmetic runs in x's dtype on x's device.
"""
from __future__ import annotations

import math

import torch

from lib.infra.config import DDIM_GRIDS
from lib.schedule import Schedule

__all__ = ["time_tensor", "progress_iter", "ab_table", "grid_table", "lincomb", "noise_like", "ddim_from_ab",
           "ddim_coefficients", "apply_ddim", "ddim_step", "check_eta", "pndm_midpoint", "GRIDS", "DDIM_GRIDS",
           "EDM_GRIDS", "EDM_SIGMA_MAX", "EDM_SIGMA_MIN", "edm_sigmas", "edm_times", "time_pairs"]


def time_tensor(t: float, x: torch.Tensor) -> torch.Tensor:
    """t as the contract's float tensor ``[N]`` on x's device (float64 when x is, else float32)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)


def progress_iter(items, progress: bool, desc: str = ""):
    """``items`` wrapped in a tqdm bar when ``progress`` is true."""
    if not progress:
        return items
    from lib.infra.progress import tqdm

    return tqdm(items, desc=desc, total=len(items))


def ab_table(schedule: Schedule, times) -> dict:
    """{t: ᾱ_t} (float64) for a set of times, from one vectorised schedule call.

    Every method builds its per-grid coefficients from such a table (none is evaluated inside the
    step loop), and DDIM and DEIS build theirs from the same canonical list of times, which keeps
    DEIS order 1 bit-identical to DDIM."""
    ts = sorted({float(t) for t in times})
    return dict(zip(ts, schedule.alpha_bar(torch.tensor(ts, dtype=torch.float64)).tolist()))


def grid_table(schedule: Schedule, pairs) -> dict:
    return ab_table(schedule, [t for pair in pairs for t in pair])


def lincomb(x: torch.Tensor, a: float, terms) -> torch.Tensor:
    """a·x + Σ c_j e_j. DDIM and DEIS both go through here, so DEIS order 1 equals DDIM bit for bit."""
    out = x * a
    for c, e in terms:
        out.add_(e, alpha=c)
    return out


def noise_like(x: torch.Tensor, generator) -> torch.Tensor:
    # Draw on the generator's device, then move: the same seed gives the same noise on CPU and GPU.
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)



def ddim_from_ab(ab_t: float, ab_n: float, eta: float = 0.0) -> tuple[float, float, float]:
    sigma = 0.0
    if eta > 0 and ab_n > ab_t:
        sigma = eta * math.sqrt((1.0 - ab_n) / (1.0 - ab_t) * (1.0 - ab_t / ab_n))
    a = math.sqrt(ab_n / ab_t)
    b = math.sqrt(max(1.0 - ab_n - sigma**2, 0.0)) - a * math.sqrt(1.0 - ab_t)
    return a, b, sigma


def ddim_coefficients(schedule: Schedule, t, t_next, eta: float = 0.0) -> tuple[float, float, float]:
    """(a, b, σ) of the DDIM step x_{t'} = a x_t + b ε + σ z, in float64.

    σ = η √((1-ᾱ_{t'})/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_{t'}) (DDIM eq. 16), a = √(ᾱ_{t'}/ᾱ_t),
    b = √(1-ᾱ_{t'}-σ²) - a √(1-ᾱ_t). η = 1 is DDPM's ancestral step between the two times.
    """
    tab = ab_table(schedule, [t, t_next])
    return ddim_from_ab(tab[float(t)], tab[float(t_next)], eta)


def apply_ddim(x, eps, coefs, generator=None, noise=None):
    a, b, sigma = coefs
    out = lincomb(x, a, [(b, eps)])
    if sigma > 0:
        out.add_(noise if noise is not None else noise_like(x, generator), alpha=sigma)
    return out


def ddim_step(x, eps, schedule: Schedule, t, t_next, eta: float = 0.0, generator=None, noise=None):
    """One DDIM step from t to t_next (φ of PNDM when η = 0); ``noise`` overrides the draw of z.

    A building block for other modules; the samplers here use per-grid precomputed coefficients."""
    return apply_ddim(x, eps, ddim_coefficients(schedule, t, t_next, eta), generator, noise)


def check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM), got {eta!r}")



def pndm_midpoint(t: int, t_next: int) -> int:
    """The pseudo-Runge–Kutta midpoint time: t - ⌊(t - t')/2⌋, an integer.

    The PNDM code calls the model at (t + t')/2 (fractional when t - t' is odd); diffusers'
    PNDMScheduler uses t - (T//S)//2. Both agree when the step is even (S = 10, 20, 50 on T = 1000).
    We take diffusers' integer rule because the network was only trained at integer t, and apply it
    per step so it also serves the quad grid. (For odd T//S, diffusers itself is inconsistent: it
    transfers x to t - ⌊Δ/2⌋ but evaluates the model at t' + ⌊Δ/2⌋, one step lower.)
    """
    return int(t) - (int(t) - int(t_next)) // 2


# ============================================================================ time grids
# A sampler receives its grid as (t, t') pairs (k-diffusion passes sigmas the same way); sample() builds
# them from (num_steps, grid) and refuses a grid the method does not run on.
# DDIM_GRIDS: the DDIM code's integer grids (Schedule.timesteps; the values of sample.grid, lib.infra.config)
EDM_GRIDS = ("edm", "edm-full")  # EDM's ρ = 7 grid in σ, fractional times
GRIDS = DDIM_GRIDS + EDM_GRIDS
EDM_SIGMA_MAX, EDM_SIGMA_MIN, EDM_RHO = 80.0, 0.002, 7.0  # EDM's (and the Restart code's) CIFAR-10 VP setting


def edm_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = EDM_RHO) -> torch.Tensor:
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


def edm_times(schedule: Schedule, num_steps: int, grid: str = "edm", rho: float = EDM_RHO) -> torch.Tensor:
    """The N = ``num_steps`` times (fractional, float64, descending) of an EDM grid.

    * ``edm``: σ from min(80, σ(T−1)) to 0.002, EDM's and the released Restart code's CIFAR-10 VP
      setting (σ_max = min(80, the network's), σ_min = max(0.002, the network's); the ε-model contract
      covers t ∈ [−1, T−1], i.e. σ ≥ 0, so σ_min = 0.002 lies at t ≈ −0.96, below the DDPM network's
      smallest trained time t = 0 (σ = 0.01): only the last grid point is there).
    * ``edm-full``: σ from σ(T−1) to σ(0) with t_0 = T−1 and t_{N−1} = 0 exactly, the whole trained range
      (this project's Heun/Restart grid before docs/method.md §8.1)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps (the number N of EDM grid points) must be a positive integer, got {num_steps!r}")
    s_top = float(schedule.sigma(schedule.T - 1))
    if grid == "edm":
        return schedule.t_from_sigma(edm_sigmas(min(EDM_SIGMA_MAX, s_top), EDM_SIGMA_MIN, num_steps, rho))
    if grid != "edm-full":
        raise ValueError(f"unknown EDM grid {grid!r}; valid: {', '.join(EDM_GRIDS)}")
    t = schedule.t_from_sigma(edm_sigmas(s_top, float(schedule.sigma(0)), num_steps, rho)).clamp(0.0, schedule.T - 1)
    t[0] = schedule.T - 1
    if num_steps > 1:
        t[-1] = 0.0
    return t


def time_pairs(schedule: Schedule, num_steps: int, grid: str) -> list[tuple]:
    """The (t, t') pairs of a named grid, the last going to t' = −1 (ᾱ = 1, σ = 0).

    ``uniform``/``quad``: :meth:`lib.schedule.Schedule.step_pairs` (integers); ``edm``/``edm-full``:
    :func:`edm_times` (floats)."""
    if grid in DDIM_GRIDS:
        return schedule.step_pairs(num_steps, grid)
    if grid in EDM_GRIDS:
        ts = edm_times(schedule, num_steps, grid).tolist()
        return list(zip(ts, ts[1:] + [-1.0]))
    raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(GRIDS)}")
