"""The Time-Shift sampler (Li et al., ICLR 2024, arXiv 2305.15583) on DDIM and on F-PNDM.

Exposure bias: a sample reached at the nominal time t' is not distributed like the training x_{t'};
its pixel variance betrays the noise level it "really" has. While the time being entered is above
the cutoff t_c, the sampler picks, per sample,

    t_s = argmin_{τ ∈ W(t')} | Var(x) − (1 − ᾱ_τ) |,   W(t') = [t' − ⌊w/2⌋, t' + ⌊w/2⌋],

Var over all pixels of that sample (unbiased, as the released code's ``torch.var``). The window is
also clipped to lie strictly between the neighbouring grid times, so every step still lowers the
noise level (never binding at the paper's settings). Two readings exist, both offered:

* ``query="nominal"`` (the default: the released TS-DPM code, which produced the paper's Table 1;
  docs/method.md §4.1): ε_θ is queried at the nominal t and the step transfers from t to t_s(t'),
  with Var taken of the *current* x (before the step); the first step is never shifted.
* ``query="shifted"`` (the paper's Algorithm 3): after a step lands at t', x is taken to *be* at t_s,
  Var(x) of the landed sample: the next step queries ε_θ(x, t_s) and transfers from t_s to the next
  grid time. On an analytic model the two readings differ by 7–34 % of max|x_0|.

Differences from the released code that remain: its grid is LDM-style (times + 1, S − 1 updates,
ending at ᾱ_0), ours the DDIM code's grid of every other sampler here (on either grid the
``nominal`` reading equals the released update to float64 rounding); and in TS-F-PNDM's pseudo-RK
warm-up the released code evaluates the network at the fractional midpoint (t + t_s)/2 while
reading ᾱ at its truncated integer index, where ``ts-pndm`` uses the integer midpoint
t − ⌊(t − t_s)/2⌋ (:func:`lib.transfer.pndm_midpoint`, per sample) for both: the network input
differs by half a time step at odd t − t_s, and the transfer is then consistent with it.

Window w and cutoff t_c default to the paper's settings per step count (:func:`default_window`,
:func:`default_cutoff`). The step count S that selects the defaults is the number of grid steps (for a uniform grid with
T mod S ≠ 0 one more than the requested S, as the DDIM code's grid; never the case at 5/10/20/50/100).
The NFE is that of the base sampler (the variance costs no evaluation).
With t_c ≥ T−1 or w = 0 nothing is shifted and the samplers equal ``ddim``/``pndm`` bit for bit
(they share lib.transfer's coefficient tables and transfer).

lib.samplers registers ``ts-ddim`` and ``ts-pndm``.
"""
from __future__ import annotations

import math

import torch

# The DDIM transfer and its coefficient tables are lib.transfer's on purpose: the trivial setting
# must reproduce ddim/pndm bit for bit, which needs the very same float64 ᾱ values and ops.
from lib.transfer import ab_table, apply_ddim, ddim_from_ab, pndm_midpoint, progress_iter
from lib.schedule import Schedule

__all__ = ["ts_ddim", "ts_pndm", "nfe_ts_ddim", "nfe_ts_pndm", "default_window", "default_cutoff", "shifted_times", "QUERIES"]

QUERIES = ("nominal", "shifted")  # the released code's reading (default), the paper's Algorithm 3
# Paper (Li et al. 2024, CIFAR-10 settings), on the T = 1000 scale: window per step count; cutoff.
PAPER_WINDOW = {10: 40, 20: 30, 50: 8, 100: 2}
PAPER_CUTOFF, PAPER_CUTOFF_FEW_STEPS = 300, 200  # t_c ≈ 300, ≈ 200 at 10 steps (and fewer)


def default_window(num_steps: int, T: int = 1000) -> int:
    """The paper's window w for ``num_steps`` (40, 30, 8, 2 at 10, 20, 50, 100 steps on T = 1000).

    Other step counts take the setting of the nearest tabulated count on a log scale (5 steps → 40);
    the window is scaled by T/1000 for other schedule lengths."""
    near = min(PAPER_WINDOW, key=lambda s: abs(math.log(s) - math.log(max(num_steps, 1))))
    return int(round(PAPER_WINDOW[near] * T / 1000))


def default_cutoff(num_steps: int, T: int = 1000) -> int:
    """The paper's cutoff t_c: 200 for ≤ 10 steps, else 300 (on T = 1000; scaled by T/1000)."""
    return int(round((PAPER_CUTOFF_FEW_STEPS if num_steps <= 10 else PAPER_CUTOFF) * T / 1000))


def _resolve(schedule: Schedule, num_steps: int, window, cutoff, query) -> tuple[int, int]:
    if query not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES} ('nominal': the released code's reading, ε_θ at t and "
                         f"t_s as the step's target; 'shifted': the paper's Algorithm 3, ε_θ at t_s), got {query!r}")
    for name, v in (("window", window), ("cutoff", cutoff)):
        if isinstance(v, bool) or not isinstance(v, int) or v < -1:
            raise ValueError(f"{name} must be an integer >= 0, or -1 for the paper's default at this step "
                             f"count, got {v!r}")
    w = default_window(num_steps, schedule.T) if window == -1 else window
    tc = default_cutoff(num_steps, schedule.T) if cutoff == -1 else cutoff
    return w, tc


class _AlphaBar:
    """ᾱ at integer times: the base sampler's own table for its grid times (so the trivial setting is
    bit-identical), and one vectorised table of every integer time for shifted ones."""

    def __init__(self, schedule: Schedule, nominal_times):
        self.nominal = ab_table(schedule, nominal_times)
        every = torch.arange(-1, schedule.T, dtype=torch.float64)
        self.every = dict(zip(every.tolist(), schedule.alpha_bar(every).tolist()))

    def __getitem__(self, t) -> float:
        t = float(t)
        return self.nominal[t] if t in self.nominal else self.every[t]


def _transfer(x, e, t_from: torch.Tensor, t_to: torch.Tensor, ab: _AlphaBar):
    """The DDIM transfer φ (η = 0) with per-sample times ``t_from``, ``t_to`` (int64 [N], CPU).

    Samples sharing a (t_from, t_to) pair go through lib.transfer's transfer with scalar coefficients
    (at most w + 1 groups), so the unshifted case runs exactly the base sampler's arithmetic."""
    pairs, inverse = torch.unique(torch.stack([t_from, t_to], 1), dim=0, return_inverse=True)
    if len(pairs) == 1:
        tf, tt = pairs[0].tolist()
        return apply_ddim(x, e, ddim_from_ab(ab[tf], ab[tt]))
    out = torch.empty_like(x)
    inverse = inverse.to(x.device)
    for k, (tf, tt) in enumerate(pairs.tolist()):
        m = inverse == k
        out[m] = apply_ddim(x[m], e[m], ddim_from_ab(ab[tf], ab[tt]))
    return out


def shifted_times(x: torch.Tensor, t_next: int, lower: int, upper: int, half: int, ab: _AlphaBar) -> torch.Tensor:
    """t_s = argmin_{τ} |Var(x) − (1 − ᾱ_τ)| per sample, τ integer in [t_next − half, t_next + half]
    clipped to (lower, upper) exclusive; Var over all pixels of each sample. Returns int64 [N] (CPU)."""
    lo, hi = max(t_next - half, lower + 1, 0), min(t_next + half, upper - 1)
    if hi < lo:  # no room between the neighbours: keep the nominal time
        return torch.full((x.shape[0],), t_next, dtype=torch.int64)
    cand = torch.arange(lo, hi + 1, dtype=torch.int64)
    target = torch.tensor([1.0 - ab[int(c)] for c in cand], dtype=torch.float64)
    var = x.detach().flatten(1).double().var(dim=1).cpu()
    return cand[(var[:, None] - target[None, :]).abs().argmin(dim=1)]  # ties: the smaller τ


def _times(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample integer times as the ε-model contract's float tensor (float64 when x is)."""
    return t.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def _full(n: int, t: int) -> torch.Tensor:
    return torch.full((n,), int(t), dtype=torch.int64)


def _target(x, i, pairs, half, cutoff, ab, shifts) -> torch.Tensor:
    """The time step i lands at, per sample: t_s(t') of x when the entered time t' = pairs[i][1] lies above
    the cutoff t_c (and w > 0), else t' itself. Records the mean shift t_s − t' in ``shifts``."""
    t, t_next = pairs[i]
    if t_next < 0 or t_next <= cutoff or half == 0:
        return _full(x.shape[0], t_next)
    after = pairs[i + 1][1] if i + 1 < len(pairs) else -1  # the window stays strictly between t'' and t
    ts = shifted_times(x, t_next, after, t, half, ab)
    shifts.append(float((ts - t_next).double().mean()))
    return ts


def _info(info, w, tc, query, shifts):
    if info is not None:
        info.update(ts_window=w, ts_cutoff=tc, ts_query=query, ts_mean_shift=shifts)


def ts_ddim(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None,
            window: int = -1, cutoff: int = -1, query: str = "nominal"):
    """TS-DDIM (η = 0): DDIM whose times are shifted to match the samples' variance (module docstring).

    ``window``/``cutoff`` −1: the paper's defaults for this step count. ``info`` receives ``ts_window``,
    ``ts_cutoff``, ``ts_query`` and ``ts_mean_shift`` (mean t_s − t' per shifted time)."""
    w, tc = _resolve(schedule, len(pairs), window, cutoff, query)
    ab = _AlphaBar(schedule, [t for pair in pairs for t in pair])  # = ddim's table: the trivial setting is ddim
    n, shifts = x_T.shape[0], []
    x = x_T
    t_at = _full(n, pairs[0][0])  # the time x is taken to be at (per sample): x_T is at t_0
    for i in progress_iter(range(len(pairs)), progress, "ts-ddim"):
        t, t_next = pairs[i]
        if query == "nominal":
            # released code: ε_θ at the nominal t; the step's target is t_s chosen from Var of the current x
            # (the window around the next nominal time t'); the first step goes to t' unshifted
            t_from = _full(n, t)
            t_to = _target(x, i, pairs, w // 2, tc, ab, shifts) if i > 0 else _full(n, t_next)
        else:
            # Algorithm 3: x was declared to be at t_s by the previous step; query ε_θ(x, t_s), step to t'
            t_from, t_to = t_at, _full(n, t_next)
        e = eps_model(x, _times(t_from, x))
        x = _transfer(x, e, t_from, t_to, ab)  # DDIM eq. 12 (η = 0) from t_from to t_to, per sample
        if query == "shifted":
            # Algorithm 3: the landed x is re-timed: t_s = argmin_τ |Var(x) − (1 − ᾱ_τ)| near t' (above t_c)
            t_at = _target(x, i, pairs, w // 2, tc, ab, shifts)
    _info(info, w, tc, query, shifts)
    return x


def ts_pndm(eps_model, x_T, schedule, pairs, *, generator=None, progress=False, info=None,
            window: int = -1, cutoff: int = -1, query: str = "nominal"):
    """TS-PNDM: F-PNDM (lib.samplers.pndm) with shifted times; S + 9 evaluations like F-PNDM.

    Each step runs from t_from to t_to (per sample, as in :func:`ts_ddim`): the pseudo-RK warm-up
    evaluates at t_from, at the integer midpoint of (t_from, t_to) twice and at t_to; the multistep
    phase combines the stored ε(x, t_from) values as F-PNDM does. (The released code's fractional
    midpoint: module docstring.)"""
    w, tc = _resolve(schedule, len(pairs), window, cutoff, query)
    if len(pairs) < 4:
        raise ValueError(f"ts-pndm needs at least 4 grid times (F-PNDM's warm-up), but the grid has {len(pairs)}; "
                         "use more steps, or 'ts-ddim'")
    mids = [pndm_midpoint(t, tn) for t, tn in pairs[:3]]
    ab = _AlphaBar(schedule, [t for pair in pairs for t in pair] + mids)  # = pndm's table
    n, shifts = x_T.shape[0], []
    x, ets = x_T, []
    t_at = _full(n, pairs[0][0])
    for i in progress_iter(range(len(pairs)), progress, "ts-pndm"):
        t, t_next = pairs[i]
        if query == "nominal":  # as in ts_ddim
            t_from = _full(n, t)
            t_to = _target(x, i, pairs, w // 2, tc, ab, shifts) if i > 0 else _full(n, t_next)
        else:
            t_from, t_to = t_at, _full(n, t_next)
        e1 = eps_model(x, _times(t_from, x))  # e₁ = ε_θ(x, t_from)
        ets = (ets + [e1])[-4:]
        if i < 3:  # F-PNDM's pseudo-RK warm-up between the per-sample times
            m = t_from - (t_from - t_to) // 2  # pndm_midpoint per sample
            e2 = eps_model(_transfer(x, e1, t_from, m, ab), _times(m, x))
            e3 = eps_model(_transfer(x, e2, t_from, m, ab), _times(m, x))
            e4 = eps_model(_transfer(x, e3, t_from, t_to, ab), _times(t_to, x))
            e_use = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        else:  # pseudo linear multistep of order 4
            e_use = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        x = _transfer(x, e_use, t_from, t_to, ab)
        if query == "shifted":
            t_at = _target(x, i, pairs, w // 2, tc, ab, shifts)
    _info(info, w, tc, query, shifts)
    return x


def _nfe(base_extra: int, min_times: int, method: str):
    def nfe(schedule, pairs, window=-1, cutoff=-1, query="nominal"):
        _resolve(schedule, len(pairs), window, cutoff, query)
        if len(pairs) < min_times:
            raise ValueError(f"{method} needs at least {min_times} grid times, got {len(pairs)}")
        return len(pairs) + base_extra
    return nfe


nfe_ts_ddim = _nfe(0, 1, "ts-ddim")  # the base sampler's NFE: the variance costs no evaluation
nfe_ts_pndm = _nfe(9, 4, "ts-pndm")
