"""The comparison tables of notebook 05: the paper's layout (sampler × arm rows, step-count columns)
with intervals, the per-cell decisions (paired t over seeds, Holm, TOST, MDE), their counts, and the
spread of each arm's FD over training seeds.

Every interval over seeds here is a paired t-interval of per-seed differences; the seeds draw
independent x_T (lib.experiment.evaluate.sample_seed), so it covers seed-to-seed variation and each
seed's sampling noise. KID (unbiased) is the headline metric; FD_clf at a few hundred samples is
mostly small-sample bias (its % differences are diluted by it), and is shown beside it."""
from __future__ import annotations

import numpy as np

from lib.measure import stats


def _fmt(v, lo, hi, digits=3, sign="", decimals=None):
    """``v [lo, hi]`` at one precision: ``decimals``, else ``digits`` significant digits of the largest."""
    m = max((abs(x) for x in (v, lo, hi) if np.isfinite(x)), default=0.0)
    d = decimals if decimals is not None else max(0, digits - 1 - int(np.floor(np.log10(m)))) if m > 0 else digits
    return f"{v:{sign}.{d}f} [{lo:{sign}.{d}f}, {hi:{sign}.{d}f}]"


def arm_cell(cells: list[dict], metric: str, level: float) -> str:
    """One arm's cell over its training seeds: mean with a t-interval over seeds, or (one seed) the
    value with its sample-bootstrap interval; three significant digits."""
    lo, hi = ("KID_lo", "KID_hi") if metric == "KID" else ("lo", "hi")
    digits = 3
    if not cells:
        return "—"
    if len(cells) == 1:
        r = cells[0]
        return _fmt(r[metric], r[lo], r[hi], digits)
    ci = stats.seed_interval([r[metric] for r in cells], level)
    return _fmt(ci["mean"], ci["lo"], ci["hi"], digits)


def paper_layout(cells: list[dict], comparisons: dict, metric: str, level: float, arms, claim) -> list[dict]:
    """Rows sampler × {arms, improvement %} for ``metric`` (FD_clf/FID or KID), columns S=…, from 04's
    cells (with a ``seed`` column) and {(method, S): lib.experiment.compare result}; each cell's
    number of seeds in brackets where the table mixes counts. (The old "difference (sample bootstrap)"
    row is gone: it covered the samples only, not another training run.)"""
    methods = list(dict.fromkeys(r["method"] for r in cells))
    steps = sorted({int(r["steps"]) for r in cells})
    counts = {c["n_seeds"] for c in comparisons.values()}
    table = []
    for method in methods:
        for arm in arms:
            row = {"sampler": method, "arm": arm}
            for S in steps:
                row[f"S={S}"] = arm_cell([c for c in cells if c["method"] == method and c["arm"] == arm
                                          and int(c["steps"]) == S], metric, level)
            table.append(row)
        imp = {"sampler": method, "arm": "improvement %", "paper claims %": f"+{claim[0]} … +{claim[1]}"}
        for S in steps:
            c = comparisons[method, S]
            if metric == "KID":  # t over seeds; no interval from one seed
                d = stats.seed_interval(100 * np.asarray(c["per_seed_kid_rel"]), level)
            else:  # lib.measure.stats.seed_difference: t over seeds, or one seed's paired sample bootstrap
                d = {"mean": 100 * c["rel"], "lo": 100 * c["rel_lo"], "hi": 100 * c["rel_hi"]}
            imp[f"S={S}"] = _fmt(d["mean"], d["lo"], d["hi"], sign="+", decimals=1) + (f" (n={c['n_seeds']})" if len(counts) > 1 else "")
        table.append(imp)
    return table


def per_seed_pct(comparisons: dict, metric: str) -> dict:
    """{cell: per-seed % differences (baseline − S²-DM)/baseline} for metric "KID" or the FD."""
    key = "per_seed_kid_rel" if metric == "KID" else "per_seed_rel"
    return {k: [100 * v for v in c[key]] for k, c in comparisons.items()}


def decisions(comparisons: dict, metric: str, margin: float = stats.MARGIN_PCT, alpha: float = 0.05,
              level: float = 0.95, families: dict | None = None) -> list[dict]:
    """One row per cell: its family (primary / exploratory, declared by the profile), improvement % with its
    paired t-interval over seeds, p and its Holm adjustment within the family, the TOST (90 % interval at
    α 0.05) against ±margin and the one-sided test against a gain of +margin (the claim), each Holm-adjusted
    within the family, the MDE at 80 % power at the family's Bonferroni bound α/m, and the verdict
    (lib.measure.stats.decide_cells)."""
    dec = stats.decide_cells(per_seed_pct(comparisons, metric), margin, alpha, level, families=families)
    return [{"metric": metric, "family": d["family"], "sampler": m, "steps": S, "n_seeds": d["n"],
             "improvement %": d["mean"], "lo": d["lo"], "hi": d["hi"], "seed sd %": d["sd"],
             "p": d["p"], "p (Holm)": d["p_holm"], f"TOST {1 - 2 * alpha:.0%} lo": d["tost_lo"],
             f"TOST {1 - 2 * alpha:.0%} hi": d["tost_hi"], "TOST p (Holm)": d["tost_p_holm"],
             "equivalent": d["equivalent"], f"p gain < {margin} % (Holm)": d["claim_p_holm"],
             "below claim": d["below_claim"], "alpha (Bonferroni bound)": d["alpha_bound"],
             "mde %": d["mde"], "verdict": d["verdict"]} for (m, S), d in dec.items()]


def summary(comparisons: dict, claim, metrics=("KID", "FD_clf"), margin: float = stats.MARGIN_PCT,
            alpha: float = 0.05, level: float = 0.95, power: float = 0.8, families: dict | None = None) -> list[dict]:
    """Counts of better / worse / equivalent / undecided cells per metric and family (Holm within the family),
    with how many cells are equivalent by the TOST and how many exclude a gain as large as the claim, the
    MDE at ``power`` at the family's Bonferroni bound α/m from the family's pooled seed SD, and the
    correction's name. The first metric is the headline."""
    families = families or {k: "all" for k in comparisons}
    out = []
    for i, metric in enumerate(metrics):
        pct = per_seed_pct(comparisons, metric)
        dec = stats.decide_cells(pct, margin, alpha, level, families=families)
        for fam in dict.fromkeys(families.values()):
            group = {k: d for k, d in dec.items() if d["family"] == fam}
            sd, _ = stats.pooled_sd({k: pct[k] for k in group})
            n, m = min(d["n"] for d in group.values()), len(group)
            v = [d["verdict"] for d in group.values()]
            out.append({"metric": metric, "headline metric": i == 0, "family": fam,
                        "cells": ", ".join(f"{a} {S}" for a, S in group) if m <= 4 else f"{m} cells",
                        "n_cells": m, "n_seeds": n if n == max(d["n"] for d in group.values()) else
                        f"{n}–{max(d['n'] for d in group.values())}",
                        "better": v.count("better"), "worse": v.count("worse"),
                        "equivalent": v.count("equivalent"), "undecided": v.count("undecided"),
                        "TOST equivalent": sum(d["equivalent"] for d in group.values()),
                        f"gain ≥ {margin} % excluded": sum(d["below_claim"] for d in group.values()),
                        "margin_pct": margin, "pooled seed sd %": sd, "alpha (Bonferroni bound)": alpha / m,
                        "mde_pct": stats.mde_paired_t(sd, n, power, alpha / m) if n > 1 and sd > 0 else float("nan"),
                        "median improvement %": float(np.median([d["mean"] for d in group.values()])),
                        "point estimate inside the paper's range": sum(claim[0] <= d["mean"] <= claim[1]
                                                                       for d in group.values()),
                        "correction": f"Holm within the {fam} family of {m} cells (α {alpha:g}; differences, TOST "
                                      f"and the claim test separately); MDE at α/{m}"})
    return out


def seed_average(comparisons: dict, keys, metric: str, level: float = 0.95) -> dict:
    """A group of cells summarised without counting dependent cells: per training seed, the mean % difference
    over ``keys`` (seeds common to all of them), then the paired t-interval and p over those seeds."""
    pct = per_seed_pct(comparisons, metric)
    common = sorted(set.intersection(*(set(comparisons[k]["seeds"]) for k in keys)))
    per = [float(np.mean([pct[k][comparisons[k]["seeds"].index(s)] for k in keys])) for s in common]
    t = stats.paired_t(per, level)
    return {"metric": metric, "cells": len(keys), "n_seeds": len(common), "per seed %": " / ".join(f"{x:+.2f}" for x in per),
            "mean %": t["mean"], "lo": t["lo"], "hi": t["hi"], "p": t["p"]}


def seed_spread(cells: list[dict], metric: str) -> list[dict]:
    """Per (arm, sampler, steps): the metric of every training seed, its mean, standard deviation and
    max/min ratio: how much another training seed moves one arm (what an EMA ramp-up should shrink)."""
    keys = list(dict.fromkeys((r["arm"], r["method"], int(r["steps"])) for r in cells))
    out = []
    for arm, method, S in keys:
        v = np.array([r[metric] for r in cells if (r["arm"], r["method"], int(r["steps"])) == (arm, method, S)])
        out.append({"arm": arm, "sampler": method, "steps": S, "n_seeds": len(v),
                    "per seed": " / ".join(f"{x:.3g}" for x in v), "mean": float(v.mean()),
                    "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                    "max/min": float(v.max() / v.min()) if v.min() > 0 else float("nan")})
    return out


def ddim_reference(table1: dict, cells: list[dict], metric: str, dataset: str, grid: str) -> list[dict]:
    """The published DDIM FIDs (lib.experiment.published.DDIM_TABLE1) as rows, with our baseline's DDIM row beside
    them when it is comparable (Inception FID on one of those datasets; mean over training seeds)."""
    names = {"cifar10": "CIFAR-10", "celeba": "CelebA"}
    rows = [{"dataset": f"{names[k]} ({v['grid']} stride)", **{f"S={S}": f for S, f in v["fid"].items()}}
            for k, v in table1.items()]
    if metric == "FID" and dataset in table1:
        ours = {"dataset": f"ours: {dataset} baseline DDIM ({grid})"}
        for S in sorted({int(r["steps"]) for r in cells}):
            v = [r[metric] for r in cells if r["method"] == "ddim" and r["arm"] == "baseline" and int(r["steps"]) == S]
            if v:
                ours[f"S={S}"] = round(float(np.mean(v)), 2)
        rows.append(ours)
    return rows


def toy_per_seed_pct(rows: list[dict], metric: str) -> dict:
    """{(method, steps): per-seed % differences 100·(baseline − s2dm)/baseline} from 04's toy cells."""
    by = {}
    for r in rows:
        by.setdefault((r["method"], int(r["steps"])), {}).setdefault(r["arm"], {})[int(r["seed"])] = float(r[metric])
    out = {}
    for key, arms in by.items():
        b, o = arms.get("baseline", {}), arms.get("s2dm", {})
        out[key] = [100 * (b[s] - o[s]) / b[s] for s in sorted(set(b) & set(o))]
    return out


def toy_decisions(rows: list[dict], metric: str, margin: float = stats.MARGIN_PCT, alpha: float = 0.05,
                  level: float = 0.95) -> list[dict]:
    """The toy's cells decided as the image cells are (lib.measure.stats.decide_cells: Holm over the
    table's cells, TOST against ±margin, MDE), on per-seed % differences of an exact metric."""
    dec = stats.decide_cells(toy_per_seed_pct(rows, metric), margin, alpha, level)
    return [{"metric": metric, "sampler": m, "steps": S, "n_seeds": d["n"], "improvement %": d["mean"],
             "lo": d["lo"], "hi": d["hi"], "p (Holm)": d["p_holm"], f"TOST {1 - 2 * alpha:.0%} lo": d["tost_lo"],
             f"TOST {1 - 2 * alpha:.0%} hi": d["tost_hi"], "TOST p (Holm)": d["tost_p_holm"], "mde %": d["mde"],
             "verdict": d["verdict"]} for (m, S), d in dec.items()]


def verdict_counts(decided: list[dict], margin: float = stats.MARGIN_PCT) -> list[dict]:
    """Better / worse / equivalent / undecided per metric of a list of decided cells."""
    out = []
    for metric in dict.fromkeys(r["metric"] for r in decided):
        v = [r["verdict"] for r in decided if r["metric"] == metric]
        out.append({"metric": metric, "n_cells": len(v), "n_seeds": min(r["n_seeds"] for r in decided if r["metric"] == metric),
                    "better": v.count("better"), "worse": v.count("worse"), "equivalent": v.count("equivalent"),
                    "undecided": v.count("undecided"), "margin_pct": margin,
                    "correction": f"Holm over the {len(v)} cells (α 0.05; differences and TOST separately)"})
    return out


def power(comparisons: dict, measures, margin: float = stats.MARGIN_PCT, alpha: float = 0.05,
          seeds=range(2, 13), keys=None) -> list[dict]:
    """Power of the paired design against the number of training seeds, at the α the decisions use (pass
    the family's Bonferroni bound α/m), from the pooled seed SD of the per-seed % differences of ``keys``
    (default every cell) with its 95 % chi-square interval: the paired t-test's power at ``margin``, its MDE
    at 80 % power (both noncentral t) and the TOST power when the true effect is 0. The cells share their
    training seeds, so the chi-square interval counts the degrees of freedom of one cell (n − 1 of the
    cell with the most seeds), not their sum: a pooled SD over dependent cells holds no more information."""
    from scipy import stats as sps

    out = []
    for m in measures:
        pct = per_seed_pct(comparisons, m)
        pct = {k: pct[k] for k in (keys or pct)}
        sd, _ = stats.pooled_sd(pct)
        df = max(len(v) for v in pct.values()) - 1
        sd_lo, sd_hi = (sd * np.sqrt(df / sps.chi2.ppf(q, df)) for q in (0.975, 0.025)) if df > 0 else (np.nan, np.nan)
        for k in seeds:
            out.append({"metric": m, "pooled seed sd %": sd, "df": df, "sd 95% lo": sd_lo, "sd 95% hi": sd_hi,
                        "alpha": alpha, "n_seeds": k, f"power at {margin} %": stats.power_paired_t(margin, sd, k, alpha),
                        "mde % (80 % power)": stats.mde_paired_t(sd, k, 0.8, alpha),
                        "TOST power (true effect 0)": stats.tost_power(margin, sd, k, alpha)})
    return out


def toy_table(rows: list[dict]) -> list[dict]:
    """Notebook 04's toy summary (lib.measure.stats.summarize_toy rows) as display cells: each arm's mean
    [interval], the improvement % and the paired difference [interval]."""
    def g4(r, a):
        return f"{r[a]:.4g} [{r[a + '_lo']:.4g}, {r[a + '_hi']:.4g}]"
    return [{"sampler": r["method"], "steps": int(r["steps"]), "baseline": g4(r, "baseline"), "S2-DM": g4(r, "s2dm"),
             "improvement %": f"{100 * r['diff'] / r['baseline']:+.2f}",
             "diff": f"{r['diff']:+.3g} [{r['diff_lo']:+.3g}, {r['diff_hi']:+.3g}]", "excludes 0": r["excludes_zero"]}
            for r in rows]
