"""The committed `cpu` verdict re-derives from its own per-seed rows (issue 27): every p, Holm p, TOST and
claim-test decision of figures/cpu/05_image_decisions.csv recomputed here, independently of lib.stats, from
figures/cpu/05_image_seed_differences.csv within the family the `cpu` profile declares (experiment.primary),
with scipy's t distribution and Holm's step-down written out."""
import csv
import math
from pathlib import Path

import pytest
from scipy import stats

from lib.infra.config import get_config

ROOT = Path(__file__).resolve().parents[1]
FIG = ROOT / "figures" / "cpu"
MARGIN = 3.27  # the paper's smallest CIFAR-10 claim, % (the equivalence margin and the claim test's bound)


def rows(name):
    path = FIG / name
    if not path.is_file():
        pytest.skip(f"{path} is not committed")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def holm(ps):
    """Holm's step-down adjusted p-values, in the input order."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def rederived():
    """Per (metric, cell): mean, 95 % t-interval, two-sided p, TOST p and claim p from the per-seed % rows, then
    Holm within each (metric, family)."""
    column = {"KID": "KID rel %", "FD_clf": "rel %"}
    primary = set(get_config("cpu").experiment.primary)
    per_cell = {}
    for r in rows("05_image_seed_differences.csv"):
        per_cell.setdefault(r["comparison"], []).append(r)
    cells = {}
    for metric, col in column.items():
        for cell, rs in per_cell.items():
            x = [float(r[col]) for r in rs]
            n, mean = len(x), sum(x) / len(x)
            se = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1) / n)
            t = stats.t(n - 1)
            family = "primary" if cell.replace(" ", "-") in primary else "exploratory"
            cells[(metric, cell)] = dict(
                family=family, n=n, mean=mean, lo=mean - t.ppf(0.975) * se, hi=mean + t.ppf(0.975) * se,
                p=2 * t.sf(abs(mean) / se),
                p_tost=max(t.sf((mean + MARGIN) / se), t.cdf((mean - MARGIN) / se)),
                p_claim=t.cdf((mean - MARGIN) / se))
    for metric in column:
        for family in ("primary", "exploratory"):
            keys = [k for k, c in cells.items() if k[0] == metric and c["family"] == family]
            for name in ("p", "p_tost", "p_claim"):
                for k, adj in zip(keys, holm([cells[k][name] for k in keys])):
                    cells[k][name + "_holm"] = adj
    return cells


def test_the_committed_decisions_rederive_from_the_per_seed_rows_within_the_declared_family():
    cells = rederived()
    committed = rows("05_image_decisions.csv")
    assert len(committed) == len(cells), "one decision row per metric and cell"
    for r in committed:
        c = cells[(r["metric"], f"{r['sampler']} {r['steps']}")]
        where = f"{r['metric']} {r['sampler']}-{r['steps']}"
        assert r["family"] == c["family"] and int(r["n_seeds"]) == c["n"], where
        for col, key in (("improvement %", "mean"), ("lo", "lo"), ("hi", "hi"), ("p", "p"), ("p (Holm)", "p_holm"),
                         ("TOST p (Holm)", "p_tost_holm"), (f"p gain < {MARGIN} % (Holm)", "p_claim_holm")):
            assert float(r[col]) == pytest.approx(c[key], rel=1e-6, abs=1e-9), f"{where}: {col}"
        better_or_worse = c["p_holm"] < 0.05
        verdict = (("better" if c["mean"] > 0 else "worse") if better_or_worse
                   else "equivalent" if c["p_tost_holm"] < 0.05 else "undecided")
        assert r["verdict"] == verdict, where
        assert (r["equivalent"] == "True") == (c["p_tost_holm"] < 0.05), where
        assert (r["below claim"] == "True") == (c["p_claim_holm"] < 0.05), where


def test_the_summary_counts_the_decisions_per_family():
    decisions = rows("05_image_decisions.csv")
    for s in rows("05_image_summary.csv"):
        mine = [d for d in decisions if d["metric"] == s["metric"] and d["family"] == s["family"]]
        assert int(s["n_cells"]) == len(mine), (s["metric"], s["family"])
        for verdict in ("better", "worse", "equivalent", "undecided"):
            assert int(s[verdict]) == sum(d["verdict"] == verdict for d in mine), (s["metric"], s["family"], verdict)
        assert int(s[f"gain ≥ {MARGIN} % excluded"]) == sum(d["below claim"] == "True" for d in mine)
