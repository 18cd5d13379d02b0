"""Samplers of the paper (DDIM, DDPM, S-PNDM, F-PNDM, tAB-DEIS) behind one entry point.

    x0 = sample(eps_model, x_T, schedule, num_steps, method="ddim", grid="uniform", eta=0.0)

:func:`sample` turns ``(num_steps, grid)`` into the grid's (t, t') pairs (:func:`lib.transfer.time_pairs`:
descending times, the last step going to t = -1, i.e. ᾱ = 1) and passes them to the solver, as
k-diffusion passes its sigmas; each method declares the grids it runs on (the DDIM code's
``uniform``/``quad``; Heun and Restart EDM's ``edm``/``edm-full``) and any other grid is refused, never
ignored. Every solver speaks the ε-model contract ``eps_model(x, t) -> eps`` with ``t`` a float tensor
``[N]`` on x's device. The network-evaluation count (NFE) of every run is measured by wrapping the
model in :class:`NFECounter`; :func:`nfe` predicts it and the tests check that the two agree
(tests/test_sampler_harness.py runs every generic check over all registered methods).

All of them build on the DDIM transfer φ of :mod:`lib.transfer` (DDIM eq. 12 with σ_t(η)), whose
coefficients are float64; the tensor arithmetic runs in x's dtype on x's device.

The registry (:data:`METHODS`) holds the paper's samplers and, imported explicitly, the neighbouring
methods' (lib.related: ``ts-ddim``, ``ts-pndm``, ``heun``, ``restart``); :func:`register` adds more
(see its docstring for the function contract).
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lib.related import restart, timeshift
from lib.schedule import Schedule, linear_schedule
from lib.transfer import (DDIM_GRIDS, EDM_GRIDS, ab_table, apply_ddim, check_eta, ddim_coefficients, ddim_from_ab,
                          ddim_step, grid_table, lincomb, pndm_midpoint, progress_iter, time_pairs, time_tensor)

__all__ = ["sample", "nfe", "register", "grid_for", "METHODS", "MethodSpec", "NFECounter", "ddim_coefficients",
           "ddim_step", "deis_coefficients", "pndm_midpoint", "time_tensor", "progress_iter", "time_pairs"]


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


# ============================================================================ DDIM / DDPM
def ddim(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12): one ε evaluation per grid time; η > 0 adds σ_t(η) z (eq. 16)."""
    check_eta(eta)
    tab = grid_table(schedule, pairs)
    coefs = [ddim_from_ab(tab[float(t)], tab[float(tn)], eta) for t, tn in pairs]  # (a, b, σ) per step, float64
    x = x_T
    for (t, _), c in progress_iter(list(zip(pairs, coefs)), progress, "ddim"):
        # eq. 12: x_{t'} = √ᾱ_{t'} x̂_0(x, ε_θ(x, t)) + √(1-ᾱ_{t'}-σ²) ε_θ + σ z, written as a x + b ε_θ + σ z
        x = apply_ddim(x, eps_model(x, time_tensor(t, x)), c, generator)
    return x


def ddpm(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None):
    """Ancestral DDPM sampling on the same grid, i.e. DDIM with η = 1.

    With η = 1, σ_t² = (1-ᾱ_{t'})/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_{t'}) is the variance of q(x_{t'} | x_t, x_0) and the
    mean is its posterior mean at x̂_0, so on the full grid (S = T) this is DDPM's Algorithm 2 with
    σ_t² = β̃_t; on a sub-grid it is the same ancestral step between the grid's times.
    """
    return ddim(eps_model, x_T, schedule, pairs, generator=generator, progress=progress, eta=1.0)


# ============================================================================ PNDM
def _need_times(method: str, pairs, k: int) -> int:
    n = len(pairs)
    if n < k:
        raise ValueError(f"{method} needs at least {k} grid times (its warm-up would otherwise evaluate ε at "
                         f"t = -1), but the grid has {n}; use more steps, or 'ddim'/'deis'")
    return n


def spndm(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None):
    """S-PNDM (Liu et al. 2022): an improved-Euler first step, then the 2-step multistep (3e₁ - e₂)/2.

    The first step: e₁ = ε(x, t), e₂ = ε(φ(x, e₁, t→t'), t'), x' = φ(x, (e₁+e₂)/2, t→t') — Heun's
    method for dy/dσ = ε. Only e₁ enters the multistep history, as in the PNDM code. NFE = n + 1.
    """
    _need_times("spndm", pairs, 2)
    tab = grid_table(schedule, pairs)
    phi = [ddim_from_ab(tab[float(t)], tab[float(tn)]) for t, tn in pairs]  # the transfer φ(t→t') (DDIM, η = 0)
    x, prev = x_T, None
    for i, ((t, t_next), c) in enumerate(progress_iter(list(zip(pairs, phi)), progress, "spndm")):
        e = eps_model(x, time_tensor(t, x))  # e₁ = ε_θ(x_t, t)
        if i == 0:
            # first step, improved Euler: e₂ = ε_θ(φ(x, e₁, t→t'), t'), ε' = (e₁ + e₂)/2
            e_use = (e + eps_model(apply_ddim(x, e, c), time_tensor(t_next, x))) / 2
        else:
            # pseudo linear multistep of order 2 (Adams–Bashforth 2): ε' = (3 e_t − e_{t+δ})/2
            e_use = (3 * e - prev) / 2
        prev = e  # the history keeps ε at the grid times only
        x = apply_ddim(x, e_use, c)  # x_{t'} = φ(x_t, ε', t→t')
    return x


def pndm(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None):
    """F-PNDM (Liu et al. 2022): 3 pseudo-RK4 warm-up steps, then (55e₁ - 59e₂ + 37e₃ - 9e₄)/24.

    Pseudo-RK step t→t' with midpoint m = :func:`pndm_midpoint` (t, t') and transfer φ = DDIM (η = 0):
    e₁ = ε(x, t); e₂ = ε(φ(x, e₁, t→m), m); e₃ = ε(φ(x, e₂, t→m), m); e₄ = ε(φ(x, e₃, t→t'), t');
    x' = φ(x, (e₁ + 2e₂ + 2e₃ + e₄)/6, t→t'). The history keeps e₁ of each step. ᾱ is read at the
    evaluated t (docs/method.md §3 Decision; the PNDM code reads it one index later). NFE = n + 9.
    """
    _need_times("pndm", pairs, 4)
    mids = [pndm_midpoint(t, tn) for t, tn in pairs[:3]]
    tab = ab_table(schedule, [t for pair in pairs for t in pair] + mids)
    phi = [ddim_from_ab(tab[float(t)], tab[float(tn)]) for t, tn in pairs]
    phi_mid = [ddim_from_ab(tab[float(t)], tab[float(m)]) for (t, _), m in zip(pairs, mids)]
    x, ets = x_T, []
    for i, ((t, t_next), c) in enumerate(progress_iter(list(zip(pairs, phi)), progress, "pndm")):
        e1 = eps_model(x, time_tensor(t, x))  # e₁ = ε_θ(x_t, t)
        ets = (ets + [e1])[-4:]
        if i < 3:
            # pseudo Runge–Kutta (RK4 with φ as the "Euler" step), the warm-up of the first 3 steps
            m, cm = mids[i], phi_mid[i]
            e2 = eps_model(apply_ddim(x, e1, cm), time_tensor(m, x))  # e₂ = ε_θ(φ(x, e₁, t→m), m)
            e3 = eps_model(apply_ddim(x, e2, cm), time_tensor(m, x))  # e₃ = ε_θ(φ(x, e₂, t→m), m)
            e4 = eps_model(apply_ddim(x, e3, c), time_tensor(t_next, x))  # e₄ = ε_θ(φ(x, e₃, t→t'), t')
            e_use = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        else:
            # pseudo linear multistep of order 4 (Adams–Bashforth 4 weights on the last four e₁)
            e_use = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        x = apply_ddim(x, e_use, c)  # x_{t'} = φ(x_t, ε', t→t')
    return x


# ============================================================================ DEIS
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)


def lagrange_integrals(schedule: Schedule, t: float, t_next: float, nodes: list) -> list[float]:
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


DEIS_AB_ORDERS = (0, 1, 2, 3)


def _check_ab_order(ab_order):
    if ab_order not in DEIS_AB_ORDERS or isinstance(ab_order, bool):
        raise ValueError(f"deis ab_order must be 0, 1, 2 or 3 (the DEIS code's tAB-k: ε extrapolated by a degree-k "
                         f"polynomial through k+1 ε values; 0 is DDIM), got {ab_order!r}")


def deis_coefficients(schedule: Schedule, pairs, ab_order: int = 3) -> list[tuple[float, list[float]]]:
    """tAB-DEIS coefficients (Zhang & Chen 2023, tAB-k with k = ``ab_order``) for the steps ``pairs``:
    [(a, [C_0, C_1, ...]), ...].

    x_{t'} = a x_t + Σ_j C_j ε_j with a = √(ᾱ_{t'}/ᾱ_t) and, ε extrapolated by the Lagrange polynomial
    of degree k in t through the last k+1 distinct evaluated times (C_0 for the newest),
    C_j = √ᾱ_{t'} ∫_{σ(t)}^{σ(t')} L_j(τ) dσ(τ), i.e. the integral of d/dτ of the DDIM transfer
    coefficient of ε against L_j. Fewer nodes while fewer ε values exist: the lower-order warm-up.
    k = 0 is DDIM exactly (the same coefficients as :func:`ddim`). The name follows the DEIS code
    (``ab_order``, "tAB3" = four ε values); this module's earlier ``order`` counted ε values (order = k + 1).
    Grid times that repeat (quad grid) are no-op steps; their evaluation replaces the previous one
    at the same time instead of adding a coincident Lagrange node.
    """
    _check_ab_order(ab_order)
    n_nodes = ab_order + 1
    tab = grid_table(schedule, pairs)  # the same table DDIM builds: tAB0 is DDIM bit for bit
    hist, out = [], []
    for t, t_next in pairs:
        hist = hist[:-1] if hist and hist[-1] == t else hist
        hist = (hist + [t])[-n_nodes:]
        a, b, _ = ddim_from_ab(tab[float(t)], tab[float(t_next)])
        if t == t_next or len(hist) == 1:
            cs = [b] if t != t_next else [0.0]
        else:
            nodes = hist[::-1]  # newest first
            cs = [math.sqrt(tab[float(t_next)]) * v for v in lagrange_integrals(schedule, t, t_next, nodes)]
        out.append((a, cs))
    return out


@functools.lru_cache(maxsize=64)
def _deis_coefficients_cached(schedule, pairs, ab_order):
    return deis_coefficients(schedule, pairs, ab_order)


def deis(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None, ab_order=3):
    """tAB-DEIS: exponential integrator in ε with Lagrange extrapolation in t (see deis_coefficients).

    The defaults follow the DEIS paper: tAB3, on a quadratic grid when no ``grid`` is given (an explicit one
    is honoured). The quadratic grid here is the DDIM code's ``quad`` (it starts at 0.8 T); the DEIS code's
    quadratic time grid spans the whole range up to T, which this project does not provide."""
    coefs = _deis_coefficients_cached(schedule, tuple(pairs), ab_order)  # once per (schedule, grid), float64
    x, hist = x_T, []
    for (t, t_next), (a, cs) in progress_iter(list(zip(pairs, coefs)), progress, "deis"):
        e = eps_model(x, time_tensor(t, x))  # ε_θ(x_t, t)
        hist = hist[:-1] if hist and hist[-1][0] == t else hist  # a repeated time replaces its evaluation
        hist = (hist + [(t, e)])[-(ab_order + 1):]
        if t == t_next:
            continue  # repeated grid time: the step is the identity (the evaluation still counts)
        # x_{t'} = √(ᾱ_{t'}/ᾱ_t) x_t + Σ_j C_j ε_j: the exact integral of the linear part, ε by its polynomial
        eps_newest_first = [e_j for _, e_j in hist[::-1]]
        x = lincomb(x, a, list(zip(cs, eps_newest_first)))
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
    grids: tuple = DDIM_GRIDS  # the grids it runs on; the first is its default

    def grid(self, grid, profile_grid: str | None = None) -> str:
        """``grid``, checked: a grid the method does not run on is an error. ``grid`` None: ``profile_grid``
        (a profile's ``sample.grid``) if the method runs on it, else the method's default (its first)."""
        if grid is None:
            return profile_grid if profile_grid in self.grids else self.grids[0]
        if grid not in self.grids:
            raise ValueError(f"method {self.name!r} runs on grid(s) {', '.join(map(repr, self.grids))}, not {grid!r}; "
                             f"leave grid out (default {self.grids[0]!r}) or pass one of those "
                             "(profile_grid= applies a profile's grid only to the methods that run on it)")
        return grid

    def resolve(self, options: dict) -> dict:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise ValueError(f"unknown option(s) {unknown} for method {self.name!r}; valid options: {valid}")
        return {**self.options, **options}


METHODS: dict[str, MethodSpec] = {}


def register(name: str, fn: Callable, nfe: Callable, grids: tuple = DDIM_GRIDS) -> MethodSpec:
    """Add a sampling method under ``name``.

    ``fn(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None,
    <options>=<default>, ...) -> x_0`` with ``pairs`` the grid's (t, t') steps (the last to t' = -1):
    its keyword-only parameters other than generator/progress/info are the method's options (with
    their defaults); it may add entries to the ``info`` dict. ``nfe(schedule, pairs, **options) -> int``
    predicts its number of ε evaluations. ``grids``: the names of :data:`lib.transfer.GRIDS` it runs on,
    its default first. Re-registering a name is allowed only for the same function (e.g. after a reload).
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
    grids = tuple(grids)
    if not grids or any(g not in DDIM_GRIDS + EDM_GRIDS for g in grids):
        raise ValueError(f"{name}: grids must be names from {DDIM_GRIDS + EDM_GRIDS}, got {grids}")
    spec = MethodSpec(name, fn, nfe, options, grids)
    METHODS[name] = spec
    return spec


def _deis_nfe(schedule, pairs, ab_order=3):
    _check_ab_order(ab_order)
    return len(pairs)


def _ddim_nfe(schedule, pairs, eta=0.0):
    check_eta(eta)
    return len(pairs)


register("ddim", ddim, _ddim_nfe)
register("ddpm", ddpm, lambda schedule, pairs: len(pairs))
register("spndm", spndm, lambda schedule, pairs: _need_times("spndm", pairs, 2) + 1)
register("pndm", pndm, lambda schedule, pairs: _need_times("pndm", pairs, 4) + 9)
register("deis", deis, _deis_nfe, grids=("quad", "uniform"))


# The neighbouring methods' samplers (lib.related), registered here like the paper's own.
register("ts-ddim", timeshift.ts_ddim, timeshift.nfe_ts_ddim)
register("ts-pndm", timeshift.ts_pndm, timeshift.nfe_ts_pndm)
register("heun", restart.heun, restart.nfe_heun, grids=EDM_GRIDS)
register("restart", restart.restart, restart.nfe_restart, grids=EDM_GRIDS)


def _spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[method]


def grid_for(method: str, grid: str | None) -> str:
    """``grid`` if ``method`` runs on it, else the method's own default grid: how a sweep applies a profile's
    ``sample.grid`` (a DDIM-code grid) to every method, Heun and Restart keeping EDM's grid. :func:`sample`,
    :func:`nfe` and lib.generate do this themselves when given ``profile_grid``."""
    return _spec(method).grid(None, grid)


# ============================================================================ entry points
def nfe(method: str, num_steps: int, grid: str | None = None, schedule: Schedule | None = None, *,
        profile_grid: str | None = None, **options) -> int:
    """The number of ε evaluations ``sample`` makes (schedule None: the default T = 1000 schedule)."""
    spec = _spec(method)
    opts = spec.resolve(options)
    schedule = schedule if schedule is not None else linear_schedule()
    return int(spec.nfe(schedule, time_pairs(schedule, num_steps, spec.grid(grid, profile_grid)), **opts))


def sample(eps_model, x_T: torch.Tensor, schedule: Schedule, num_steps: int, method: str = "ddim", *,
           grid: str | None = None, profile_grid: str | None = None, generator: torch.Generator | None = None,
           info: dict | None = None, progress: bool = False, **options) -> torch.Tensor:
    """Run ``method`` from x_T over the grid ``time_pairs(schedule, num_steps, grid)``; returns x_0.

    ``grid`` None: ``profile_grid`` (a profile's ``sample.grid``) when the method runs on it, else the
    method's default ('uniform'; 'quad' for deis; 'edm' for heun/restart); a ``grid`` the method does not
    run on is refused. Options per method: ddim ``eta`` (0, in [0, 1]); deis ``ab_order``
    (3: the DEIS code's tAB3, four ε values; 0 = DDIM); ts-ddim/ts-pndm ``window``, ``cutoff``, ``query``;
    restart ``k``, ``n_r``, ``sigma_min``, ``sigma_max``, ``gamma``, ``s_min``, ``s_max``, ``s_noise``;
    ddpm, spndm, pndm, heun none. ``generator`` drives all randomness (DDIM η > 0, DDPM, Restart).
    ``info``, if given, receives ``nfe`` (the counted ε calls), ``timesteps`` (the grid times),
    ``eval_times`` (t of every call), ``method``, ``num_steps``, ``grid`` and ``options``. Runs under
    ``torch.no_grad()``.
    """
    spec = _spec(method)
    opts = spec.resolve(options)
    if not torch.is_tensor(x_T) or not x_T.is_floating_point() or x_T.ndim < 1:
        raise ValueError("x_T must be a floating-point tensor [N, ...]")
    grid = spec.grid(grid, profile_grid)
    pairs = time_pairs(schedule, num_steps, grid)  # validates num_steps and grid
    counter = NFECounter(eps_model)
    details = {"timesteps": [t for t, _ in pairs]}
    with torch.no_grad():
        x0 = spec.fn(counter, x_T, schedule, pairs, generator=generator, progress=progress, info=details, **opts)
    if info is not None:
        info.update(details)
        info.update(method=method, num_steps=num_steps, grid=grid, options=opts, nfe=counter.count,
                    eval_times=counter.times)
    return x0
