"""Samplers of the paper (DDIM, DDPM, S-PNDM, F-PNDM, tAB-DEIS) behind one entry point.

    x0 = sample(eps_model, x_T, schedule, num_steps, method="ddim", grid="uniform", eta=0.0)

Every method walks the DDIM code's grid ``schedule.step_pairs(num_steps, grid)`` (descending integer
times, the last step going to t = -1, i.e. ᾱ = 1) and speaks the ε-model contract
``eps_model(x, t) -> eps`` with ``t`` a float tensor ``[N]`` on x's device. The network-evaluation
count (NFE) of every run is measured by wrapping the model in :class:`NFECounter`; :func:`nfe`
predicts it and the tests check that the two agree.

All of them build on the DDIM transfer φ (DDIM eq. 12 with σ_t(η)):

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1-ᾱ_{t'}-σ²) ε + σ z,   x̂_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t   (no clipping)

which at η = 0 is exact for a constant ε: in y = x/√ᾱ and σ(t) = √((1-ᾱ_t)/ᾱ_t) the probability-flow
ODE reads dy/dσ = ε, and φ is its Euler step y' = y + (σ' - σ) ε.

Per-step coefficients are computed in float64 (Python floats); the tensor arithmetic runs in x's
dtype on x's device.

Later modules add methods with :func:`register` (see its docstring for the function contract).
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lib.schedule import Schedule, linear_schedule

__all__ = ["sample", "nfe", "register", "METHODS", "MethodSpec", "NFECounter", "ddim_coefficients",
           "ddim_step", "deis_coefficients", "pndm_midpoint", "time_tensor", "progress_iter"]


# ============================================================================ shared pieces
class NFECounter:
    """Wraps an ε-model and counts its calls (the honest NFE); also keeps the times it was called at."""

    def __init__(self, eps_model: Callable):
        self.eps_model = eps_model
        self.count = 0
        self._t = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.eps_model(x, t)
        self.count += 1
        self._t.append(t.detach().clone())
        if out.shape != x.shape:
            raise ValueError(f"eps_model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; an "
                             "ε-model must return a tensor shaped like x")
        return out

    @property
    def times(self) -> list:
        """t of every call: a float when all samples shared it, else the per-sample list."""
        out = []
        for t in self._t:
            t = t.flatten().double().cpu()
            out.append(float(t[0]) if bool((t == t[0]).all()) else t.tolist())
        return out

    def reset(self) -> None:
        self.count = 0
        self._t = []


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


def _ab_table(schedule: Schedule, times) -> dict:
    """{t: ᾱ_t} (float64) for a set of times, from one vectorised schedule call.

    Every method builds its per-grid coefficients from such a table (none is evaluated inside the
    step loop), and DDIM and DEIS build theirs from the same canonical list of times, which keeps
    DEIS order 1 bit-identical to DDIM."""
    ts = sorted({float(t) for t in times})
    return dict(zip(ts, schedule.alpha_bar(torch.tensor(ts, dtype=torch.float64)).tolist()))


def _grid_table(schedule: Schedule, pairs) -> dict:
    return _ab_table(schedule, [t for pair in pairs for t in pair])


def _lincomb(x: torch.Tensor, a: float, terms) -> torch.Tensor:
    """a·x + Σ c_j e_j. DDIM and DEIS both go through here, so DEIS order 1 equals DDIM bit for bit."""
    out = x * a
    for c, e in terms:
        out.add_(e, alpha=c)
    return out


def _noise(x: torch.Tensor, generator) -> torch.Tensor:
    # Draw on the generator's device, then move: the same seed gives the same noise on CPU and GPU.
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


# ============================================================================ DDIM / DDPM
def _ddim_from_ab(ab_t: float, ab_n: float, eta: float = 0.0) -> tuple[float, float, float]:
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
    tab = _ab_table(schedule, [t, t_next])
    return _ddim_from_ab(tab[float(t)], tab[float(t_next)], eta)


def _apply_ddim(x, eps, coefs, generator=None, noise=None):
    a, b, sigma = coefs
    out = _lincomb(x, a, [(b, eps)])
    if sigma > 0:
        out.add_(noise if noise is not None else _noise(x, generator), alpha=sigma)
    return out


def ddim_step(x, eps, schedule: Schedule, t, t_next, eta: float = 0.0, generator=None, noise=None):
    """One DDIM step from t to t_next (φ of PNDM when η = 0); ``noise`` overrides the draw of z.

    A building block for other modules; the samplers here use per-grid precomputed coefficients."""
    return _apply_ddim(x, eps, ddim_coefficients(schedule, t, t_next, eta), generator, noise)


def _check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM), got {eta!r}")


def ddim(eps_model, x_T, schedule, num_steps, grid, *, generator=None, progress=False, info=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12): one ε evaluation per grid time; η > 0 adds σ_t(η) z."""
    _check_eta(eta)
    pairs = schedule.step_pairs(num_steps, grid)
    tab = _grid_table(schedule, pairs)
    coefs = [_ddim_from_ab(tab[float(t)], tab[float(tn)], eta) for t, tn in pairs]
    x = x_T
    for (t, _), c in progress_iter(list(zip(pairs, coefs)), progress, "ddim"):
        x = _apply_ddim(x, eps_model(x, time_tensor(t, x)), c, generator)
    return x


def ddpm(eps_model, x_T, schedule, num_steps, grid, *, generator=None, progress=False, info=None):
    """Ancestral DDPM sampling on the same grid, i.e. DDIM with η = 1.

    With η = 1, σ_t² = (1-ᾱ_{t'})/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_{t'}) is the variance of q(x_{t'} | x_t, x_0) and the
    mean is its posterior mean at x̂_0, so on the full grid (S = T) this is DDPM's Algorithm 2 with
    σ_t² = β̃_t; on a sub-grid it is the same ancestral step between the grid's times.
    """
    return ddim(eps_model, x_T, schedule, num_steps, grid, generator=generator, progress=progress, eta=1.0)


# ============================================================================ PNDM
def pndm_midpoint(t: int, t_next: int) -> int:
    """The pseudo-Runge–Kutta midpoint time: t - ⌊(t - t')/2⌋, an integer.

    The PNDM code calls the model at (t + t')/2 (fractional when t - t' is odd); diffusers'
    PNDMScheduler uses t - (T//S)//2. Both agree when the step is even (S = 10, 20, 50 on T = 1000).
    We take diffusers' integer rule because the network was only trained at integer t, and apply it
    per step so it also serves the quad grid. (For odd T//S, diffusers itself is inconsistent: it
    transfers x to t - ⌊Δ/2⌋ but evaluates the model at t' + ⌊Δ/2⌋, one step lower.)
    """
    return int(t) - (int(t) - int(t_next)) // 2


def _need_timesteps(method: str, schedule, num_steps, grid, k: int) -> int:
    n = len(schedule.timesteps(num_steps, grid))
    if n < k:
        raise ValueError(f"{method} needs at least {k} grid times (its warm-up would otherwise evaluate ε at "
                         f"t = -1), but num_steps={num_steps} on grid {grid!r} gives {n}; use more steps, or "
                         "'ddim'/'deis'")
    return n


def spndm(eps_model, x_T, schedule, num_steps, grid, *, generator=None, progress=False, info=None):
    """S-PNDM (Liu et al. 2022): an improved-Euler first step, then the 2-step multistep (3e₁ - e₂)/2.

    The first step: e₁ = ε(x, t), e₂ = ε(φ(x, e₁, t→t'), t'), x' = φ(x, (e₁+e₂)/2, t→t') — Heun's
    method for dy/dσ = ε. Only e₁ enters the multistep history, as in the PNDM code. NFE = n + 1.
    """
    _need_timesteps("spndm", schedule, num_steps, grid, 2)
    pairs = schedule.step_pairs(num_steps, grid)
    tab = _grid_table(schedule, pairs)
    phi = [_ddim_from_ab(tab[float(t)], tab[float(tn)]) for t, tn in pairs]  # the transfer φ(t→t')
    x, prev = x_T, None
    for i, ((t, t_next), c) in enumerate(progress_iter(list(zip(pairs, phi)), progress, "spndm")):
        e = eps_model(x, time_tensor(t, x))
        if i == 0:
            e_use = (e + eps_model(_apply_ddim(x, e, c), time_tensor(t_next, x))) / 2
        else:
            e_use = (3 * e - prev) / 2
        prev = e
        x = _apply_ddim(x, e_use, c)
    return x


def pndm(eps_model, x_T, schedule, num_steps, grid, *, generator=None, progress=False, info=None):
    """F-PNDM (Liu et al. 2022): 3 pseudo-RK4 warm-up steps, then (55e₁ - 59e₂ + 37e₃ - 9e₄)/24.

    Pseudo-RK step t→t' with midpoint m = :func:`pndm_midpoint` (t, t') and transfer φ = DDIM (η = 0):
    e₁ = ε(x, t); e₂ = ε(φ(x, e₁, t→m), m); e₃ = ε(φ(x, e₂, t→m), m); e₄ = ε(φ(x, e₃, t→t'), t');
    x' = φ(x, (e₁ + 2e₂ + 2e₃ + e₄)/6, t→t'). The history keeps e₁ of each step. ᾱ is read at the
    evaluated t (PAPER.md §3 Decision; the PNDM code reads it one index later). NFE = n + 9.
    """
    _need_timesteps("pndm", schedule, num_steps, grid, 4)
    pairs = schedule.step_pairs(num_steps, grid)
    mids = [pndm_midpoint(t, tn) for t, tn in pairs[:3]]
    tab = _ab_table(schedule, [t for pair in pairs for t in pair] + mids)
    phi = [_ddim_from_ab(tab[float(t)], tab[float(tn)]) for t, tn in pairs]
    phi_mid = [_ddim_from_ab(tab[float(t)], tab[float(m)]) for (t, _), m in zip(pairs, mids)]
    x, ets = x_T, []
    for i, ((t, t_next), c) in enumerate(progress_iter(list(zip(pairs, phi)), progress, "pndm")):
        e1 = eps_model(x, time_tensor(t, x))
        ets = (ets + [e1])[-4:]
        if i < 3:
            m, cm = mids[i], phi_mid[i]
            e2 = eps_model(_apply_ddim(x, e1, cm), time_tensor(m, x))
            e3 = eps_model(_apply_ddim(x, e2, cm), time_tensor(m, x))
            e4 = eps_model(_apply_ddim(x, e3, c), time_tensor(t_next, x))
            e_use = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        else:
            e_use = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        x = _apply_ddim(x, e_use, c)
    return x


# ============================================================================ DEIS
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)


def _lagrange_integrals(schedule: Schedule, t: float, t_next: float, nodes: list) -> list[float]:
    """∫_{σ(t)}^{σ(t')} L_j(τ(σ)) dσ for the Lagrange basis L_j in t through ``nodes`` (float64).

    The integral is taken in σ, split at the integer knots where ᾱ's log-linear interpolation has
    kinks: on each piece log ᾱ is affine in τ, so τ(σ) = affine(-log(1+σ²)) is analytic, and
    8-point Gauss–Legendre in σ is exact to rounding (in τ the integrand has a √ singularity at
    t = -1, where σ → 0). The sum over j is exactly σ(t') - σ(t) (partition of unity).
    """
    lo, hi = float(t_next), float(t)
    edges = [lo] + [float(k) for k in range(math.floor(lo) + 1, math.ceil(hi))] + [hi]
    e = np.asarray(edges, dtype=np.float64)
    ell = np.log(schedule.alpha_bar(torch.from_numpy(e)).numpy())  # log ᾱ at the edges
    sig = np.sqrt(np.expm1(-ell))
    half, mid = (sig[1:] - sig[:-1]) / 2, (sig[1:] + sig[:-1]) / 2
    s = mid[:, None] + half[:, None] * _GL_X[None, :]  # σ nodes, [pieces, 8]
    ell_s = -np.log1p(s**2)
    tau = e[:-1, None] + (ell_s - ell[:-1, None]) / (ell[1:, None] - ell[:-1, None]) * (e[1:, None] - e[:-1, None])
    w = half[:, None] * _GL_W[None, :]
    out = []
    for j, tj in enumerate(nodes):
        L = np.ones_like(tau)
        for m, tm in enumerate(nodes):
            if m != j:
                L = L * (tau - tm) / (tj - tm)
        out.append(-float((w * L).sum()))  # minus: the step runs from σ(t) down to σ(t')
    return out


def _check_order(order):
    if order not in (1, 2, 3, 4) or isinstance(order, bool):
        raise ValueError(f"deis order must be 1, 2, 3 or 4 (the number of ε values in the extrapolation; "
                         f"1 is DDIM), got {order!r}")


def deis_coefficients(schedule: Schedule, pairs, order: int = 3) -> list[tuple[float, list[float]]]:
    """tAB-DEIS coefficients (Zhang & Chen 2023) for the steps ``pairs``: [(a, [C_0, C_1, ...]), ...].

    x_{t'} = a x_t + Σ_j C_j ε_j with a = √(ᾱ_{t'}/ᾱ_t) and, ε extrapolated by the Lagrange polynomial
    in t through the last k distinct evaluated times (C_0 for the newest),
    C_j = √ᾱ_{t'} ∫_{σ(t)}^{σ(t')} L_j(τ) dσ(τ), i.e. the integral of d/dτ of the DDIM transfer
    coefficient of ε against L_j. k = min(order, evaluations so far): the lower-order warm-up.
    k = 1 is DDIM exactly (the same coefficients as :func:`ddim`).
    ``order`` counts Lagrange nodes (polynomial degree order-1): the DEIS code's ``ab_order=r``
    ("tAB-r", DDIM at r = 0) is ``order=r+1`` here, so its tAB3 is ``order=4``.
    Grid times that repeat (quad grid) are no-op steps; their evaluation replaces the previous one
    at the same time instead of adding a coincident Lagrange node.
    """
    _check_order(order)
    tab = _grid_table(schedule, pairs)  # the same table DDIM builds: order 1 is DDIM bit for bit
    hist, out = [], []
    for t, t_next in pairs:
        hist = hist[:-1] if hist and hist[-1] == t else hist
        hist = (hist + [t])[-order:]
        a, b, _ = _ddim_from_ab(tab[float(t)], tab[float(t_next)])
        if t == t_next or len(hist) == 1:
            cs = [b] if t != t_next else [0.0]
        else:
            nodes = hist[::-1]  # newest first
            cs = [math.sqrt(tab[float(t_next)]) * v for v in _lagrange_integrals(schedule, t, t_next, nodes)]
        out.append((a, cs))
    return out


@functools.lru_cache(maxsize=64)
def _deis_coefficients_cached(schedule, pairs, order):
    return deis_coefficients(schedule, pairs, order)


def deis(eps_model, x_T, schedule, num_steps, grid, *, generator=None, progress=False, info=None, order=3):
    """tAB-DEIS: exponential integrator in ε with Lagrange extrapolation in t (see deis_coefficients).

    The DEIS paper samples with the quad grid; here the ``grid`` argument decides.
    """
    pairs = schedule.step_pairs(num_steps, grid)
    coefs = _deis_coefficients_cached(schedule, tuple(pairs), order)  # once per (schedule, grid), float64
    x, hist = x_T, []
    for (t, t_next), (a, cs) in progress_iter(list(zip(pairs, coefs)), progress, "deis"):
        e = eps_model(x, time_tensor(t, x))
        hist = hist[:-1] if hist and hist[-1][0] == t else hist
        hist = (hist + [(t, e)])[-order:]
        if t == t_next:
            continue  # repeated grid time: the step is the identity (the evaluation still counts)
        eps_newest_first = [e_j for _, e_j in hist[::-1]]
        x = _lincomb(x, a, list(zip(cs, eps_newest_first)))
    return x


# ============================================================================ registry
_RESERVED = ("generator", "progress", "info")


@dataclass(frozen=True)
class MethodSpec:
    """A registered sampler: its function, its NFE predictor and its options with defaults."""

    name: str
    fn: Callable
    nfe: Callable
    options: dict

    def resolve(self, options: dict) -> dict:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise ValueError(f"unknown option(s) {unknown} for method {self.name!r}; valid options: {valid}")
        return {**self.options, **options}


METHODS: dict[str, MethodSpec] = {}


def register(name: str, fn: Callable, nfe: Callable) -> MethodSpec:
    """Add a sampling method under ``name``.

    ``fn(eps_model, x_T, schedule, num_steps, grid, *, generator=None, progress=False, info=None,
    <options>=<default>, ...) -> x_0``: its keyword-only parameters other than generator/progress/info
    are the method's options (with their defaults); it may add entries to the ``info`` dict.
    ``nfe(schedule, num_steps, grid, **options) -> int`` predicts its number of ε evaluations.
    Re-registering a name is allowed only for the same function (e.g. after a module reload).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("method name must be a non-empty string")
    if not callable(fn) or not callable(nfe):
        raise TypeError("register(name, fn, nfe) needs callables fn and nfe")
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise ValueError(f"{name}: declare the options of fn as keyword-only parameters, not **kwargs")
    options = {p.name: p.default for p in params
               if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _RESERVED}
    missing = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY
               and p.default is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"{name}: keyword-only parameters {missing} of fn need defaults")
    old = METHODS.get(name)
    if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
        raise ValueError(f"method {name!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
    spec = MethodSpec(name, fn, nfe, options)
    METHODS[name] = spec
    return spec


def _n(schedule, num_steps, grid) -> int:
    return len(schedule.timesteps(num_steps, grid))


def _deis_nfe(schedule, num_steps, grid, order=3):
    _check_order(order)
    return _n(schedule, num_steps, grid)


def _ddim_nfe(schedule, num_steps, grid, eta=0.0):
    _check_eta(eta)
    return _n(schedule, num_steps, grid)


register("ddim", ddim, _ddim_nfe)
register("ddpm", ddpm, lambda schedule, num_steps, grid: _n(schedule, num_steps, grid))
register("spndm", spndm, lambda schedule, num_steps, grid: _need_timesteps("spndm", schedule, num_steps, grid, 2) + 1)
register("pndm", pndm, lambda schedule, num_steps, grid: _need_timesteps("pndm", schedule, num_steps, grid, 4) + 9)
register("deis", deis, _deis_nfe)


# Modules that register further samplers (related methods). They import this module, so they are
# loaded on first need rather than at import time (no import cycle).
EXTENSIONS = ("lib.timeshift", "lib.restart")


def _load_extensions():
    import importlib

    for mod in EXTENSIONS:
        importlib.import_module(mod)


def _spec(method: str) -> MethodSpec:
    if method not in METHODS:
        _load_extensions()
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[method]


# ============================================================================ entry points
def nfe(method: str, num_steps: int, grid: str = "uniform", schedule: Schedule | None = None, **options) -> int:
    """The number of ε evaluations ``sample`` makes (schedule None: the default T = 1000 schedule)."""
    spec = _spec(method)
    opts = spec.resolve(options)
    schedule = schedule if schedule is not None else linear_schedule()
    return int(spec.nfe(schedule, num_steps, grid, **opts))


def sample(eps_model, x_T: torch.Tensor, schedule: Schedule, num_steps: int, method: str = "ddim", *,
           grid: str = "uniform", generator: torch.Generator | None = None, info: dict | None = None,
           progress: bool = False, **options) -> torch.Tensor:
    """Run ``method`` from x_T over the DDIM grid ``schedule.step_pairs(num_steps, grid)``; returns x_0.

    Options per method: ddim ``eta`` (0, in [0, 1]); deis ``order`` (3: ε values in the Lagrange
    extrapolation, 1 = DDIM); ddpm, spndm, pndm none. The grid is whatever ``grid`` says for every
    method (the DEIS paper samples on 'quad', the DDIM paper on 'quad' for CIFAR-10). ``generator``
    drives all randomness (DDIM η > 0, DDPM). ``info``, if given, receives ``nfe`` (the counted
    ε calls), ``timesteps`` (the grid times), ``eval_times`` (t of every call), ``method``,
    ``num_steps``, ``grid`` and ``options``. Runs under ``torch.no_grad()``.
    """
    spec = _spec(method)
    opts = spec.resolve(options)
    if not torch.is_tensor(x_T) or not x_T.is_floating_point() or x_T.ndim < 1:
        raise ValueError("x_T must be a floating-point tensor [N, ...]")
    timesteps = schedule.timesteps(num_steps, grid).tolist()  # validates num_steps and grid
    counter = NFECounter(eps_model)
    details = {"timesteps": timesteps}
    with torch.no_grad():
        x0 = spec.fn(counter, x_T, schedule, num_steps, grid, generator=generator, progress=progress,
                     info=details, **opts)
    if info is not None:
        info.update(details)
        info.update(method=method, num_steps=num_steps, grid=grid, options=opts, nfe=counter.count,
                    eval_times=counter.times)
    return x0
