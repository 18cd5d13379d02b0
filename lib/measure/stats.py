"""Uncertainty over training seeds: paired t-intervals, equivalence (TOST), Holm's correction, power.

The unit of replication is the training seed: seed s of every arm shares initial weights, data order
and noise streams (lib.experiment.runs), and both arms (every method) of seed s are sampled from the
same initial noise x_T, drawn with the sample seed of *that* training seed
(lib.experiment.evaluate.sample_seed), so different training seeds see independent x_T. The arms'
difference is measured *within* a seed and its spread over seeds is what another training run
*and another draw of sample noise* would bring: an interval over seeds covers the seed-to-seed
variation and each seed's sampling noise. (A sample-bootstrap interval, lib.measure.metrics, covers
only the samples of one seed, its networks held fixed.)

Decisions on a table of cells (notebook 05):

* :func:`paired_t`: the paired t-interval over seeds and its two-sided p for "no difference";
* :func:`tost`: Schuirmann's two one-sided tests against ±margin (equivalent ⇔ the (1 − 2α)
  t-interval lies inside ±margin);
* :func:`holm`: Holm's step-down adjustment of a family's p-values (family-wise error ≤ α);
* :func:`below_claim`: the one-sided test that excludes a gain as large as the claim;
* :func:`fieller_ratio`: Fieller's interval for a ratio of paired means (the positive control's fraction);
* :func:`power_paired_t`, :func:`mde_paired_t`, :func:`tost_power`, :func:`n_for_power`: the
  power of the paired t-test from the noncentral t distribution, the minimum detectable effect at
  a given power, and the seeds needed.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

#: The paper's smallest claimed CIFAR-10 improvement (docs/method.md §1), the default equivalence margin, in %.
MARGIN_PCT = 3.27


def seed_interval(values, level: float = 0.95) -> dict:
    """Mean and two-sided Student-t interval over independent seeds (nan bounds for one seed).

    Given per-seed paired differences this is the paired t-interval over seeds."""
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


def paired_t(diffs, level: float = 0.95) -> dict:
    """Paired t-test over seeds of per-seed differences d_s: mean, sd, the ``level`` t-interval
    mean ± t_{n−1}·sd/√n and the two-sided p of H0: E[d] = 0 (nan for one seed)."""
    d = np.asarray(diffs, dtype=np.float64)
    ci = seed_interval(d, level)
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    if n < 2:
        p = float("nan")
    elif sd == 0:
        p = 1.0 if ci["mean"] == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(ci["mean"]) / (sd / math.sqrt(n)), n - 1))
    return dict(mean=ci["mean"], lo=ci["lo"], hi=ci["hi"], sd=sd, p=p, n=n, level=level)


def tost(diffs, margin: float = MARGIN_PCT, alpha: float = 0.05) -> dict:
    """Two one-sided paired t-tests (TOST) of H0: |E[d]| ≥ margin against H1: |E[d]| < margin.

    Equivalence is declared at level α when both one-sided tests reject, i.e. when the (1 − 2α)
    t-interval over seeds (90 % at α = 0.05) lies inside (−margin, +margin); ``p`` is the larger of
    the two one-sided p-values. Needs ≥ 2 seeds (else undecided, p nan)."""
    if margin <= 0:
        raise ValueError(f"tost: the equivalence margin must be > 0, got {margin}")
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    ci = seed_interval(d, 1 - 2 * alpha)
    if n < 2:
        return dict(equivalent=False, p=float("nan"), lo=ci["lo"], hi=ci["hi"], margin=margin, alpha=alpha, n=n)
    se = d.std(ddof=1) / math.sqrt(n)
    m = float(d.mean())
    if se == 0:
        p = 0.0 if abs(m) < margin else 1.0
    else:
        p = float(max(stats.t.sf((m + margin) / se, n - 1), stats.t.cdf((m - margin) / se, n - 1)))
    return dict(equivalent=bool(p < alpha), p=p, lo=ci["lo"], hi=ci["hi"], margin=margin, alpha=alpha, n=n)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values: sort p ascending, p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j)),
    returned in the input order (nan p-values stay nan and do not count in m). Rejecting p̃ < α keeps
    the family-wise error rate ≤ α over the m tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        out[k] = running
    return out.tolist()


def power_paired_t(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level α over n seeds when the true mean difference is
    ``delta`` and the per-seed SD is ``sd``: P(|T| > t_{1−α/2, n−1}) with T ~ noncentral t(n − 1,
    δ√n/σ) (exact, no normal approximation)."""
    if n < 2:
        return float("nan")
    df, nc = n - 1, abs(delta) * math.sqrt(n) / sd
    t = stats.t.ppf(1 - alpha / 2, df)
    far = stats.nct.cdf(-t, df, nc)  # the wrong-side tail: underflows (scipy may give nan) for large nc
    return float(stats.nct.sf(t, df, nc) + (far if np.isfinite(far) else 0.0))


def mde_paired_t(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Minimum detectable effect: the smallest |δ| the two-sided paired t-test over n seeds detects
    with probability ``power`` (root of :func:`power_paired_t`, noncentral t), in the units of ``sd``."""
    if n < 2:
        return float("inf")
    return float(optimize.brentq(lambda d: power_paired_t(d, sd, n, alpha) - power, 1e-9 * sd, 1e3 * sd))


def tost_power(margin: float, sd: float, n: int, alpha: float = 0.05, delta: float = 0.0) -> float:
    """Power of the paired TOST over n seeds to declare equivalence within ±margin when the true
    difference is ``delta``: the standard approximation 1 − P(lower test fails) − P(upper test fails),
    each from its noncentral t (a lower bound; exact when the two failures exclude each other,
    close to exact once the power is ≥ 0.5)."""
    if n < 2:
        return 0.0
    df, t = n - 1, stats.t.ppf(1 - alpha, n - 1)
    se = sd / math.sqrt(n)
    miss = [stats.nct.cdf(t, df, nc) for nc in ((delta + margin) / se, (margin - delta) / se)]
    miss = [m if np.isfinite(m) else float(nc < t) for m, nc in zip(miss, ((delta + margin) / se, (margin - delta) / se))]
    return float(max(0.0, 1.0 - sum(miss)))


def n_for_power(power_of_n, target: float = 0.8, n_max: int = 1000) -> int:
    """The smallest n ≥ 2 with ``power_of_n(n) ≥ target`` (e.g. ``lambda n: tost_power(3.27, 1.7, n)``)."""
    for n in range(2, n_max + 1):
        if power_of_n(n) >= target:
            return n
    raise ValueError(f"n_for_power: power {target} is not reached with up to {n_max} seeds")


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
    * ``boot_lo``, ``boot_hi``: the sample-bootstrap interval with the networks held fixed (one seed:
      its own bootstrap interval; several: a normal interval for the mean from the per-seed bootstrap
      spreads, valid because each training seed draws its own x_T, so the seeds' sample sets are
      independent). It covers the samples only, not what another training run would bring.
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


def below_claim(diffs, margin: float = MARGIN_PCT) -> float:
    """One-sided paired t-test of H0: E[d] ≥ margin (the claimed gain) against H1: E[d] < margin; its p
    (nan for one seed). Rejecting says the design excludes a gain as large as the claim."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n < 2:
        return float("nan")
    se = d.std(ddof=1) / math.sqrt(n)
    if se == 0:
        return 0.0 if d.mean() < margin else 1.0
    return float(stats.t.cdf((d.mean() - margin) / se, n - 1))


def decide_cells(per_seed_pct: dict, margin: float = MARGIN_PCT, alpha: float = 0.05, level: float = 0.95,
                 power: float = 0.8, families: dict | None = None) -> dict:
    """Per cell of a table, from its per-seed % differences (> 0: the second arm better):
    the paired t-interval over seeds (``level``), the two-sided p, the TOST against ±``margin`` and the
    one-sided test against the claimed gain (:func:`below_claim`), each Holm-adjusted **within the cell's
    family** (``families``: {cell: family name}, declared before any data; default one family), the MDE at
    ``power`` from the cell's own seed SD at the Bonferroni bound α/m of its family (the α of Holm's first
    step, so the MDE never promises more than the decisions can deliver), and a verdict: "better"/"worse"
    (Holm p < α), else "equivalent" (Holm TOST p < α), else "undecided"; ``equivalent`` and ``below_claim``
    say the TOST and the claim test separately (a cell can be worse *and* equivalent). Keys are kept."""
    families = families or {k: "all" for k in per_seed_pct}
    if set(families) != set(per_seed_pct):
        raise ValueError(f"decide_cells: families name other cells than the table: {sorted(set(families) ^ set(per_seed_pct))}")
    out = {}
    for key, d in per_seed_pct.items():
        t, e = paired_t(d, level), tost(d, margin, alpha)
        out[key] = dict(mean=t["mean"], lo=t["lo"], hi=t["hi"], sd=t["sd"], n=t["n"], p=t["p"], tost_p=e["p"],
                        tost_lo=e["lo"], tost_hi=e["hi"], claim_p=below_claim(d, margin), family=families[key])
    for fam in dict.fromkeys(families.values()):
        keys = [k for k in out if families[k] == fam]
        m = len(keys)
        for name, col in (("p_holm", "p"), ("tost_p_holm", "tost_p"), ("claim_p_holm", "claim_p")):
            for k, v in zip(keys, holm([out[k][col] for k in keys])):
                out[k][name] = v
        for k in keys:
            c = out[k]
            c["family_size"], c["alpha_bound"] = m, alpha / m
            c["mde"] = mde_paired_t(c["sd"], c["n"], power, alpha / m) if c["n"] > 1 and c["sd"] > 0 else float("nan")
    for c in out.values():
        c["equivalent"], c["below_claim"] = bool(c["tost_p_holm"] < alpha), bool(c["claim_p_holm"] < alpha)
        if c["p_holm"] < alpha:
            c["verdict"] = "better" if c["mean"] > 0 else "worse"
        elif c["equivalent"]:
            c["verdict"] = "equivalent"
        else:
            c["verdict"] = "undecided"
    return out


def fieller_ratio(num, den, level: float = 0.95) -> dict:
    """Fieller's interval for E[num]/E[den] from paired per-seed values: the ρ for which the paired t-test of
    num − ρ·den does not reject at 1 − ``level``. Bounded when E[den] is itself significantly non-zero at that
    level; else ``bounded`` False and the bounds are nan (the ratio is not determined)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    n = len(a)
    if n != len(b) or n < 2:
        raise ValueError(f"fieller_ratio needs two paired lists of >= 2 values, got {len(a)} and {len(b)}")
    ma, mb = a.mean(), b.mean()
    saa, sbb, sab = a.var(ddof=1) / n, b.var(ddof=1) / n, np.cov(a, b, ddof=1)[0, 1] / n
    t2 = stats.t.ppf(0.5 + level / 2, n - 1) ** 2
    qa, qb, qc = mb * mb - t2 * sbb, ma * mb - t2 * sab, ma * ma - t2 * saa  # qa ρ² − 2 qb ρ + qc ≤ 0
    ratio = float(ma / mb) if mb != 0 else float("nan")
    disc = qb * qb - qa * qc
    if qa <= 0 or disc < 0:
        return dict(ratio=ratio, lo=float("nan"), hi=float("nan"), bounded=False, n=n)
    r = math.sqrt(disc)
    return dict(ratio=ratio, lo=float((qb - r) / qa), hi=float((qb + r) / qa), bounded=True, n=n)


def pooled_sd(per_seed_pct: dict) -> tuple[float, int]:
    """The pooled within-cell SD over seeds, √(Σ(n_c − 1)s_c² / Σ(n_c − 1)), and its degrees of freedom."""
    num = den = 0
    for d in per_seed_pct.values():
        d = np.asarray(d, dtype=np.float64)
        if len(d) > 1:
            num += (len(d) - 1) * d.var(ddof=1)
            den += len(d) - 1
    return (math.sqrt(num / den) if den else float("nan")), den
