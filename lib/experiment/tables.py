"""The comparison tables of notebook 05: the paper's layout (sampler × arm rows, step-count columns)
with intervals, the count of decided cells, and the spread of each arm's FD over training seeds."""
from __future__ import annotations

import numpy as np

from lib.measure import stats


def _fmt(v, lo, hi, digits=3, sign=""):
    return f"{v:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def arm_cell(cells: list[dict], metric: str, level: float) -> str:
    """One arm's cell over its training seeds: mean with a t-interval over seeds, or (one seed) the
    value with its sample-bootstrap interval."""
    if len(cells) == 1:
        r = cells[0]
        return _fmt(r[metric], r["lo"], r["hi"])
    ci = stats.seed_interval([r[metric] for r in cells], level)
    return _fmt(ci["mean"], ci["lo"], ci["hi"])


def paper_layout(cells: list[dict], comparisons: dict, metric: str, level: float, arms, claim) -> list[dict]:
    """Rows sampler × {arms, improvement %, FD difference}, columns S=…, from 04's cells (with a
    ``seed`` column) and {(method, S): lib.experiment.compare result}."""
    methods = list(dict.fromkeys(r["method"] for r in cells))
    steps = sorted({int(r["steps"]) for r in cells})
    table = []
    for method in methods:
        for arm in arms:
            row = {"sampler": method, "arm": arm}
            for S in steps:
                row[f"S={S}"] = arm_cell([c for c in cells if c["method"] == method and c["arm"] == arm
                                          and int(c["steps"]) == S], metric, level)
            table.append(row)
        imp = {"sampler": method, "arm": "improvement %", "paper claims %": f"+{claim[0]} … +{claim[1]}"}
        dif = {"sampler": method, "arm": "difference (sample bootstrap)"}
        for S in steps:
            c = comparisons[method, S]
            imp[f"S={S}"] = _fmt(100 * c["rel"], 100 * c["rel_lo"], 100 * c["rel_hi"], 1, "+")
            dif[f"S={S}"] = _fmt(c["diff"], c["boot_lo"], c["boot_hi"], 3, "+")
        table += [imp, dif]
    return table


def summary(comparisons: dict, claim) -> dict:
    """How many cells S²-DM wins or loses, decided by the seed-level interval (lib.measure.stats.seed_difference)."""
    cs = list(comparisons.values())
    n = len(cs)
    better = sum(c["excludes_zero"] and c["diff"] > 0 for c in cs)
    worse = sum(c["excludes_zero"] and c["diff"] < 0 for c in cs)
    return {"cells": n, "n_seeds": min(c["n_seeds"] for c in cs),
            "S2-DM better (interval excludes 0)": better, "S2-DM worse (interval excludes 0)": worse,
            "undecided": n - better - worse,
            "point estimate inside the paper's range": sum(claim[0] <= 100 * c["rel"] <= claim[1] for c in cs),
            "median improvement %": float(np.median([100 * c["rel"] for c in cs])),
            "seeds agreeing in sign (median share)": float(np.median([
                max(np.mean(np.array(c["per_seed"]) > 0), np.mean(np.array(c["per_seed"]) < 0)) for c in cs])),
            "decided by": cs[0]["decided_by"]}


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
