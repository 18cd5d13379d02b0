"""Seed-level statistics (lib.measure.stats) and the table writers (lib.experiment.report)."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from lib.experiment import report

from lib.measure import stats


def test_seed_interval_matches_student_t():
    v = [1.0, 2.0, 4.0]
    ci = stats.seed_interval(v, 0.95)
    h = sps.t.ppf(0.975, 2) * np.std(v, ddof=1) / math.sqrt(3)
    assert ci["mean"] == pytest.approx(7 / 3) and ci["n"] == 3
    assert ci["lo"] == pytest.approx(7 / 3 - h) and ci["hi"] == pytest.approx(7 / 3 + h)
    assert stats.seed_interval(v, 0.5)["hi"] < ci["hi"]  # a lower level gives a narrower interval


def test_seed_interval_one_seed_has_no_interval_and_bad_input_is_refused():
    ci = stats.seed_interval([3.0])
    assert ci["mean"] == 3.0 and math.isnan(ci["lo"]) and math.isnan(ci["hi"])
    with pytest.raises(ValueError, match="non-empty"):
        stats.seed_interval([])


def test_seed_interval_covers_at_its_level():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        ci = stats.seed_interval(rng.normal(1.0, 2.0, 3), 0.9)
        hits += ci["lo"] <= 1.0 <= ci["hi"]
    assert 0.87 < hits / 2000 < 0.93


def _toy_rows(base, other):
    rows = []
    for s, (b, o) in enumerate(zip(base, other)):
        rows += [{"arm": "baseline", "method": "ddim", "steps": 5, "seed": s, "nfe": 5, "mmd": b},
                 {"arm": "s2dm", "method": "ddim", "steps": 5, "seed": s, "nfe": 5, "mmd": o}]
    return rows


def test_summarize_toy_pairs_by_seed():
    # The arms differ by exactly 0.1 in every seed while the seeds spread widely: the paired
    # difference is exact (zero width), although the arms' own intervals overlap.
    base = [1.0, 2.0, 3.0, 5.0]
    row, = stats.summarize_toy(_toy_rows(base, [b - 0.1 for b in base]), "mmd")
    assert row["diff"] == pytest.approx(0.1) and row["diff_hi"] - row["diff_lo"] == pytest.approx(0, abs=1e-12)
    assert row["excludes_zero"] and row["n_seeds"] == 4
    assert row["baseline_lo"] < row["s2dm"] < row["baseline_hi"]
    row, = stats.summarize_toy(_toy_rows(base, [b + d for b, d in zip(base, (0.1, -0.1, 0.2, -0.2))]), "mmd")
    assert not row["excludes_zero"] and row["diff"] == pytest.approx(0)


def _comp(diff, std=0.1, fd_a=10.0):
    return {"fd_a": fd_a, "fd_b": fd_a - diff, "diff": diff, "diff_lo": diff - 2 * std, "diff_hi": diff + 2 * std,
            "diff_std": std, "rel": diff / fd_a, "rel_lo": (diff - 2 * std) / fd_a, "rel_hi": (diff + 2 * std) / fd_a,
            "excludes_zero": abs(diff) > 2 * std}


def test_seed_difference_decides_on_the_seed_level():
    # Every seed's bootstrap excludes 0, but the seeds disagree in sign: undecided.
    d = stats.seed_difference([_comp(1.0), _comp(-1.0), _comp(1.2)])
    assert d["n_seeds"] == 3 and d["decided_by"] == "t over 3 seeds" and not d["excludes_zero"]
    assert d["per_seed"] == [1.0, -1.0, 1.2] and d["diff"] == pytest.approx(0.4)
    assert d["boot_hi"] - d["boot_lo"] < d["diff_hi"] - d["diff_lo"]  # seeds add variation
    agree = stats.seed_difference([_comp(1.0), _comp(1.1), _comp(0.9)])
    assert agree["excludes_zero"] and agree["diff_lo"] > 0


def test_seed_difference_with_one_seed_is_its_bootstrap():
    c = _comp(0.5)
    d = stats.seed_difference([c])
    assert (d["diff_lo"], d["diff_hi"], d["rel_lo"], d["rel_hi"]) == (c["diff_lo"], c["diff_hi"], c["rel_lo"], c["rel_hi"])
    assert d["excludes_zero"] == c["excludes_zero"] and d["decided_by"] == "bootstrap (1 seed)"
    with pytest.raises(ValueError):
        stats.seed_difference([])


def test_report_tables_round_trip(tmp_path):
    rows = [{"a": 1.5, "b": "x", "c": True}, {"a": 0.0001234, "b": "y", "c": False}]
    md = report.save_table(rows, tmp_path, "t", title="T")
    assert md.startswith("**T**") and "| a | b | c |" in md and "1.23e-04" in md and "| 1.50 | x | yes |" in md
    back = report.read_table(tmp_path / "t.csv")
    assert back[0]["a"] == 1.5 and back[1]["b"] == "y" and back[0]["c"] == "True"
    assert report.save_table(rows, tmp_path, "u", columns=["b"]).count("|") == 2 * 4
    assert report.to_markdown([]) .startswith("| ")


def test_report_markdown_is_for_people_and_the_csv_keeps_everything(tmp_path):
    rows = [{"method": "ddim", "steps": 10, "FD": 61.3912, "FD_lo": 59.2051, "FD_hi": 63.5774, "a − b": -0.04959,
             "lo": -4.597, "hi": 4.498, "boot lo": -0.8831, "boot hi": 0.7832, "excludes 0": True, "n_seeds": 3.0,
             "x1": 1, "x2": 2, "x3": 3, "x4": 4, "x5": 1},
            {"method": "pndm", "steps": 20, "FD": 35.4, "FD_lo": 32.1, "FD_hi": 38.8, "a − b": 0.5, "lo": 0.1,
             "hi": 0.9, "boot lo": 0.2, "boot hi": 0.8, "excludes 0": "False", "n_seeds": 3.0,
             "x1": 5, "x2": 6, "x3": 7, "x4": 8, "x5": 2}]
    md = report.save_table(rows, tmp_path, "t")
    head, _, *body = md.splitlines()
    cols = head.strip("|").split(" | ")
    assert len(cols) <= report.MAX_COLUMNS and "FD_lo" not in head and "lo" not in [c.strip() for c in cols]
    assert "FD [lo, hi]" in head and "a − b [lo, hi]" in head and "boot [lo, hi]" in head
    assert "| 61.4 [59.2, 63.6] |" in md and "-0.05 [-4.60, 4.50]" in md and "[-0.883, 0.783]" in md
    assert "True" not in md and "False" not in md and "| yes |" in md and "| no |" in md
    assert "In every row: n_seeds 3." in md  # the constant column leaves the table (it is over 10 wide)
    assert "Not shown here (in the CSV): x5." in md
    assert len(report.read_table(tmp_path / "t.csv")[0]) == len(rows[0])  # the CSV keeps every column


def test_report_figure_writes_png_and_pdf(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    paths = report.save_figure(fig, tmp_path / "f", "x")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)


# ---------------------------------------------------------------------------- decisions: t, TOST, Holm, power
def test_paired_t_p_matches_scipy():
    d = [1.2, -0.3, 2.1, 0.8, 1.5]
    t = stats.paired_t(d)
    assert t["p"] == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue)
    assert t["lo"] < t["mean"] < t["hi"] and t["n"] == 5


def test_tost_is_the_90_percent_interval_inside_the_margin():
    rng = np.random.default_rng(1)
    for _ in range(200):
        d = rng.normal(rng.uniform(-3, 3), rng.uniform(0.2, 3), size=rng.integers(2, 9))
        e = stats.tost(d, margin=3.27, alpha=0.05)
        ci = stats.seed_interval(d, 0.90)
        inside = -3.27 < ci["lo"] and ci["hi"] < 3.27
        assert e["equivalent"] == inside and e["lo"] == pytest.approx(ci["lo"])
    # a hand case: mean 0, sd 1, n 4: se 0.5; p = P(T3 > 3.27/0.5) one-sided
    e = stats.tost([-1.0, 1.0, -1.0, 1.0][:4] * 1, margin=3.27)
    se = np.std([-1, 1, -1, 1], ddof=1) / 2
    assert e["p"] == pytest.approx(sps.t.sf(3.27 / se, 3)) and e["equivalent"]
    assert not stats.tost([0.0, 5.0, 10.0], margin=3.27)["equivalent"]
    with pytest.raises(ValueError, match="margin"):
        stats.tost([1.0, 2.0], margin=0)


def test_holm_known_values_and_order():
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adj = stats.holm([0.5, float("nan"), 0.01])
    assert adj[0] == pytest.approx(0.5) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.02)
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # monotone, capped at 1


def test_power_of_the_paired_t_matches_known_values_and_simulation():
    # G*Power / Cohen: one-sample (paired) t, d = 1, n = 10, two-sided α .05: power 0.8031; d = 0.5 needs n = 34.
    assert stats.power_paired_t(1.0, 1.0, 10) == pytest.approx(0.8031, abs=5e-4)
    assert stats.n_for_power(lambda n: stats.power_paired_t(0.5, 1.0, n)) == 34
    rng = np.random.default_rng(0)
    x = rng.normal(3.27, 1.7, size=(20000, 3))
    sim = np.mean(np.abs(x.mean(1) / (x.std(1, ddof=1) / np.sqrt(3))) > sps.t.ppf(0.975, 2))
    assert stats.power_paired_t(3.27, 1.7, 3) == pytest.approx(sim, abs=0.015)
    assert stats.power_paired_t(0.0, 1.0, 5) == pytest.approx(0.05)


def test_mde_inverts_the_power():
    for sd, n in ((1.7, 3), (1.7, 6), (0.5, 12)):
        mde = stats.mde_paired_t(sd, n)
        assert stats.power_paired_t(mde, sd, n) == pytest.approx(0.8, abs=1e-6)
    assert stats.mde_paired_t(1.7, 6) < stats.mde_paired_t(1.7, 3)


def test_tost_power_approximation_against_simulation():
    rng = np.random.default_rng(2)
    for sd, n in ((1.7, 6), (1.7, 8), (1.0, 4)):
        x = rng.normal(0.0, sd, size=(20000, n))
        m, se = x.mean(1), x.std(1, ddof=1) / np.sqrt(n)
        t = sps.t.ppf(0.95, n - 1)
        sim = np.mean((m - t * se > -3.27) & (m + t * se < 3.27))
        approx = stats.tost_power(3.27, sd, n)
        assert approx <= sim + 0.01 and approx == pytest.approx(sim, abs=0.03)


def test_decide_cells_verdicts_and_holm_family():
    per = {"better": [5.0, 5.5, 6.0, 5.2, 5.8, 6.1], "worse": [-5.0, -5.5, -6.0, -5.2, -5.8, -6.1],
           "equivalent": [0.1, -0.2, 0.3, 0.0, -0.1, 0.2], "undecided": [4.0, -3.0, 6.0, -2.0, 5.0, -4.0]}
    dec = stats.decide_cells(per, margin=3.27)
    assert {k: d["verdict"] for k, d in dec.items()} == {k: k for k in per}
    raw = [dec[k]["p"] for k in per]
    assert [dec[k]["p_holm"] for k in per] == pytest.approx(stats.holm(raw))
    assert all(d["mde"] > 0 for d in dec.values())
    sd, df = stats.pooled_sd({"a": [1.0, 3.0], "b": [0.0, 0.0, 3.0]})
    assert df == 3 and sd == pytest.approx(math.sqrt((2.0 + 6.0) / 3))


def test_seed_average_averages_within_seed_not_counting_cells():
    from lib.experiment import tables

    # Two cells, three seeds: every cell's seeds agree in sign with the other cell, but averaged per
    # seed the spread is what it is: one t-interval over 3 seeds, not 6 "same-sign" results.
    comps = {("ddim", 50): {"seeds": [0, 1, 2], "per_seed_rel": [0.01, 0.02, 0.03]},
             ("ddim", 100): {"seeds": [0, 1, 2], "per_seed_rel": [0.03, 0.02, 0.05]}}
    avg = tables.seed_average(comps, list(comps), "FD_clf")
    assert avg["n_seeds"] == 3 and avg["mean %"] == pytest.approx(100 * np.mean([0.02, 0.02, 0.04]))
    assert avg["p"] == pytest.approx(sps.ttest_1samp([2.0, 2.0, 4.0], 0).pvalue)


def test_toy_decisions_from_per_seed_cells():
    from lib.experiment import tables

    rows = []
    for s, (b, o) in enumerate([(1.0, 0.9), (2.0, 1.8), (1.5, 1.35), (1.2, 1.08)]):  # S²-DM 10 % better in every seed
        rows += [{"arm": "baseline", "method": "ddim", "steps": 5, "seed": s, "mmd": b},
                 {"arm": "s2dm", "method": "ddim", "steps": 5, "seed": s, "mmd": o}]
        rows += [{"arm": "baseline", "method": "ddim", "steps": 10, "seed": s, "mmd": b},
                 {"arm": "s2dm", "method": "ddim", "steps": 10, "seed": s, "mmd": b * (1 + 0.001 * (-1) ** s)}]
    assert tables.toy_per_seed_pct(rows, "mmd")["ddim", 5] == pytest.approx([10.0] * 4)
    dec = {r["steps"]: r["verdict"] for r in tables.toy_decisions(rows, "mmd")}
    assert dec == {5: "better", 10: "equivalent"}
    c, = tables.verdict_counts(tables.toy_decisions(rows, "mmd"))
    assert (c["better"], c["equivalent"], c["worse"], c["undecided"], c["n_cells"]) == (1, 1, 0, 0, 2)


def test_markdown_keeps_settings_apart_that_three_digits_would_merge():
    from lib.experiment import report

    md = report.to_markdown([{"lambda": v, "fd": f} for v, f in [(0.995, 86.63), (1.0002, 86.61), (1.002, 90.1),
                                                                  (1.005, 3.2)]])
    cells = [line.split("|")[1].strip() for line in md.splitlines()[2:]]
    assert cells == ["0.9950", "1.000", "1.002", "1.005"]  # not 1.00 / 1.00 / 1.00
    assert "| 86.6 |" in md and "| 3.20 |" in md  # measured values keep three significant digits


def test_dose_runs_are_named_by_their_setting_in_the_progress_display(tmp_path):
    from lib.experiment import runs
    from lib.infra.config import get_config
    from lib.infra.paths import Paths

    cfg, P = get_config("ci"), Paths("ci", tmp_path)
    jobs = runs.dose_jobs(cfg, P)
    key = next(k for k in jobs if k[0] == "images")
    assert runs._label(key, jobs[key]).startswith(f"images {key[1]} s") and key[1] != "s2dm"


def test_holm_runs_within_each_declared_family_and_the_claim_test_is_corrected_too():
    per = {("ddim", 10): [-2.0, -2.5, -1.8, -2.2, -2.4, -1.9], ("ddim", 20): [-1.5, -2.0, -1.7, -2.1, -1.6, -1.8],
           ("pndm", 10): [0.5, -3.0, 2.0, -1.0, 4.0, -2.5], ("pndm", 20): [1.0, 0.2, -0.5, 0.8, 0.1, -0.3]}
    fam = {k: "primary" if k[0] == "ddim" else "exploratory" for k in per}
    dec = stats.decide_cells(per, margin=3.27, families=fam)
    for f in ("primary", "exploratory"):
        keys = [k for k in per if fam[k] == f]
        for col, raw in (("p_holm", "p"), ("tost_p_holm", "tost_p"), ("claim_p_holm", "claim_p")):
            assert [dec[k][col] for k in keys] == pytest.approx(stats.holm([dec[k][raw] for k in keys]))
        assert all(dec[k]["family_size"] == 2 and dec[k]["alpha_bound"] == 0.025 for k in keys)
    # significantly worse *and* inside ±3.27 %: both are said
    assert dec["ddim", 10]["verdict"] == "worse" and dec["ddim", 10]["equivalent"] and dec["ddim", 10]["below_claim"]
    one = stats.decide_cells(per, margin=3.27)  # one family of 4: larger Holm p, larger MDE
    assert one["ddim", 20]["p_holm"] > dec["ddim", 20]["p_holm"] and one["ddim", 20]["mde"] > dec["ddim", 20]["mde"]
    assert dec["ddim", 10]["mde"] == pytest.approx(stats.mde_paired_t(dec["ddim", 10]["sd"], 6, 0.8, 0.025))
    d = np.array(per["pndm", 10])
    assert stats.below_claim(d) == pytest.approx(sps.ttest_1samp(d, 3.27, alternative="less").pvalue)
    with pytest.raises(ValueError, match="families name other cells"):
        stats.decide_cells(per, families={("ddim", 10): "primary"})


def test_fieller_interval_is_the_set_of_ratios_a_paired_t_test_does_not_reject():
    rng = np.random.default_rng(3)
    den = -1.0 + 0.1 * rng.standard_normal(5)
    num = 0.6 * den + 0.05 * rng.standard_normal(5)
    f = stats.fieller_ratio(num, den)
    assert f["bounded"] and f["lo"] < f["ratio"] < f["hi"] and f["ratio"] == pytest.approx(num.mean() / den.mean())
    grid = np.linspace(f["lo"] - 0.5, f["hi"] + 0.5, 4001)
    kept = [r for r in grid if sps.ttest_1samp(num - r * den, 0).pvalue >= 0.05]
    assert min(kept) == pytest.approx(f["lo"], abs=5e-4) and max(kept) == pytest.approx(f["hi"], abs=5e-4)
    flat = stats.fieller_ratio([1.0, -1.0, 0.5], [0.1, -0.2, 0.15])  # the denominator is not significant
    assert not flat["bounded"] and math.isnan(flat["lo"])
