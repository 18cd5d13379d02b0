"""The DDIM transfer φ and the per-grid coefficient tables that every solver builds on.

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1-ᾱ_{t'}-σ²) ε + σ z,   x̂_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t   (DDIM eq. 12, no clipping)

At η = 0 it is exact for a constant ε: in y = x/√ᾱ and σ(t) = √((1-ᾱ_t)/ᾱ_t) the probability-flow
ODE reads dy/dσ = ε, and φ is its Euler step y' = y + (σ' - σ) ε. DDIM, PNDM, DEIS (lib.solvers),
Time-Shift and Restart (lib.related) all step through :func:`apply_ddim` with coefficients from
:func:`ab_table`, so a neighbour at its trivial setting reproduces its base sampler bit for bit.
Coefficients are float64 (Python floats); tensor arithmetic runs in x's dtype on x's device.
"""
from __future__ import annotations

import math

import torch

from lib.schedule import Schedule

__all__ = ["time_tensor", "progress_iter", "ab_table", "grid_table", "lincomb", "noise_like", "ddim_from_ab",
           "ddim_coefficients", "apply_ddim", "ddim_step", "check_eta", "pndm_midpoint"]


def time_tensor(t: float, x: torch.Tensor) -> torch.Tensor:
    """t as the contract's float tensor ``[N]`` on x's device (float64 when x is, else float32)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)


def progress_iter(items, progress: bool, desc: str = ""):
    """``items`` wrapped in a tqdm bar when ``progress`` is true."""
    if not progress:
        return items
    from lib.progress import tqdm

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
