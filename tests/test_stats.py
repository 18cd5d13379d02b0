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
