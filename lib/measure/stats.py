"""Uncertainty over training seeds: Student-t intervals over seeds, and paired arm differences.

The unit of replication is the training seed: seed s of every arm shares initial weights, data order
and noise streams (lib.experiment.runs), so the arms' difference is measured *within* a seed and its spread over
seeds is what another training run would bring. An interval over seeds therefore contains the
sampling noise of each seed's sample set as well as the seed-to-seed variation.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def seed_interval(values, level: float = 0.95) -> dict:
    """Mean and two-sided Student-t interval over independent seeds (nan bounds for one seed)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"seed_interval needs a non-empty list of numbers, got shape {v.shape}")
    m = float(v.mean())
    if len(v) < 2:
        return dict(mean=m, lo=float("nan"), hi=float("nan"), n=len(v))
    h = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return dict(mean=m, lo=m - h, hi=m + h, n=len(v))


def excludes_zero(lo: float, hi: float) -> bool:
    return bool(lo > 0 or hi < 0)


def summarize_toy(rows: list[dict], metric: str = "mmd", level: float = 0.95, baseline: str = "baseline",
                  other: str = "s2dm") -> list[dict]:
    """Per (method, steps): each arm's mean over seeds with its t-interval, and the paired difference
    baseline − other (positive: ``other`` is better for lower-is-better metrics) with its t-interval."""
    out = []
    keys = sorted({(r["method"], r["steps"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for method, S in keys:
        cell = [r for r in rows if r["method"] == method and r["steps"] == S]
        by = {a: {r["seed"]: r[metric] for r in cell if r["arm"] == a} for a in {r["arm"] for r in cell}}
        row = {"method": method, "steps": S, "nfe": cell[0]["nfe"], "metric": metric}
        for a, vals in sorted(by.items()):
            ci = seed_interval(list(vals.values()), level)
            row.update({f"{a}": ci["mean"], f"{a}_lo": ci["lo"], f"{a}_hi": ci["hi"]})
        if baseline in by and other in by:
            seeds = sorted(set(by[baseline]) & set(by[other]))
            d = seed_interval([by[baseline][s] - by[other][s] for s in seeds], level)
            row.update({"diff": d["mean"], "diff_lo": d["lo"], "diff_hi": d["hi"], "n_seeds": len(seeds),
                        "excludes_zero": excludes_zero(d["lo"], d["hi"])})
        out.append(row)
    return out


def seed_difference(per_seed: list[dict], level: float = 0.95) -> dict:
    """Combine per-seed paired comparisons (lib.measure.metrics.compare_bootstrap outputs) of two arms.

    * ``diff`` ± (``diff_lo``, ``diff_hi``): mean over seeds of FD_a − FD_b with the **paired t-interval
      over seeds** (seed-to-seed variation included); ``rel*`` the same for (FD_a − FD_b)/FD_a.
    * ``boot_lo``, ``boot_hi``: the sample-bootstrap interval, seeds held fixed (one seed: its own
      bootstrap interval; several: a normal interval for the mean from the per-seed bootstrap spreads).
    * ``excludes_zero`` and ``decided_by``: the seed-level interval decides; with one seed there is none,
      and the sample bootstrap decides (``decided_by = "bootstrap (1 seed)"``)."""
    if not per_seed:
        raise ValueError("seed_difference needs at least one per-seed comparison")
    n = len(per_seed)
    d = seed_interval([c["diff"] for c in per_seed], level)
    r = seed_interval([c["rel"] for c in per_seed], level)
    if n == 1:
        c = per_seed[0]
        b_lo, b_hi, r_lo, r_hi = c["diff_lo"], c["diff_hi"], c["rel_lo"], c["rel_hi"]
        decided, ex = "bootstrap (1 seed)", bool(c["excludes_zero"])
    else:
        z = stats.norm.ppf(0.5 + level / 2)
        se = math.sqrt(sum(c["diff_std"] ** 2 for c in per_seed)) / n
        b_lo, b_hi = d["mean"] - z * se, d["mean"] + z * se
        r_lo, r_hi = r["lo"], r["hi"]
        decided, ex = f"t over {n} seeds", excludes_zero(d["lo"], d["hi"])
    return dict(fd_a=float(np.mean([c["fd_a"] for c in per_seed])), fd_b=float(np.mean([c["fd_b"] for c in per_seed])),
                diff=d["mean"], diff_lo=d["lo"] if n > 1 else b_lo, diff_hi=d["hi"] if n > 1 else b_hi,
                rel=r["mean"], rel_lo=r_lo, rel_hi=r_hi, boot_lo=b_lo, boot_hi=b_hi, n_seeds=n,
                excludes_zero=ex, decided_by=decided, per_seed=[c["diff"] for c in per_seed])
