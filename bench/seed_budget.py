"""How many training seeds the image comparison needs, and what the design costs on the 2-core machine.

    python bench/seed_budget.py [--figures figures/cpu] [--no-measure]

Reads the committed tables of a `make reproduce PROFILE=cpu` (figures/cpu/05_image_seed_differences.csv,
04_image_cells.csv), the committed per-notebook wall times of that run (README, "Measured wall time")
and the NFE per sample of every sampler (lib.samplers.nfe), then

1. recomputes the seed SD of the per-seed % difference (baseline − S²-DM)/baseline per cell and
   pooled, as measured (the committed run shared one x_T set between seeds, which removes part of
   the sampling noise from the spread) and a conservative SD for independent x_T per seed (the
   measured variance plus each seed's sample-bootstrap variance of its % difference);
2. tabulates, for 2 … 12 seeds, the power of the two-sided paired t-test (α 0.05, noncentral t)
   at the paper's smallest claim 3.27 %, the minimum detectable effect at 80 % power, and the power of
   the TOST within ±3.27 % at a true effect of 0 (lib.measure.stats);
3. predicts the wall time per notebook of candidate designs by scaling each committed notebook time
   with its work: 03 with image and toy training steps (their cost ratio measured here by
   lib.train.seconds_per_step), 04 with network evaluations and toy cells (their cost ratio measured
   here), 06 with its seeds, plus the extra bootstrap replicates (measured here on random features of the
   classifier's shape).

Writes bench/results/seed_budget_<profile>.md and .json. ``--no-measure`` uses the ratios of the last
.json instead of measuring (seconds of CPU otherwise).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scipy import stats as sps  # noqa: E402

from lib.infra.config import get_config  # noqa: E402
from lib.measure import stats  # noqa: E402
from lib.samplers import nfe  # noqa: E402

NOTEBOOKS = ("01", "02", "03", "04", "05", "06", "07", "08")


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        sys.exit(f"seed_budget: {path} is missing: run `make reproduce PROFILE=cpu` (or check out figures/cpu) first")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def committed_times(readme: Path) -> dict:
    """The per-notebook seconds of the measured `make reproduce` at d2c830d ("01 4 s, 02 6 s, 03 1,456 s, …")
    in ``readme`` (docs/profiles.md, "Measured wall time at `cpu`"): the base the predictions scale from."""
    # The idle run of the design LAST_MEASURED describes (the paragraph naming its commit), not the current
    # design's run above it nor the loaded run after it.
    text = next((p for p in readme.read_text().split("\n\n") if "`d2c830d`" in p), "")
    found = {k: float(v.replace(",", "")) for k, v in re.findall(r"\b(0[1-8]) ([\d,]+) s\b", text)}
    missing = [k for k in NOTEBOOKS if k not in found]
    if missing:
        sys.exit(f"seed_budget: {readme} does not give the wall time of notebooks {missing} "
                 "(expected '01 6 s, 02 8 s, …' in its 'Measured wall time' paragraph)")
    return {k: found[k] for k in NOTEBOOKS}


# ---------------------------------------------------------------------------- 1. the seed SD
def seed_sds(fig: Path) -> dict:
    """Per cell the % differences of every seed and their sampling SD (from the seed's paired
    bootstrap interval of the FD difference, divided by that seed's baseline FD)."""
    diffs = _read_csv(fig / "05_image_seed_differences.csv")
    cells = _read_csv(fig / "04_image_cells.csv")
    metric = next(k for k in ("FD_clf", "FID") if k in cells[0])
    base = {(r["method"], int(r["steps"]), int(r["seed"])): float(r[metric]) for r in cells if r["arm"] == "baseline"}
    per: dict = {}
    for r in diffs:
        method, S = r["comparison"].split()
        fa = base[method, int(S), int(r["seed"])]
        boot_sd = 100 * (float(r["boot hi"]) - float(r["boot lo"])) / (2 * 1.959964) / fa
        per.setdefault((method, int(S)), []).append((float(r["rel %"]), boot_sd))
    return per


def sd_summary(per: dict, keep) -> dict:
    pct = {k: [v for v, _ in rows] for k, rows in per.items() if keep(k)}
    sd, df = stats.pooled_sd(pct)
    samp = float(np.sqrt(np.mean([b ** 2 for k, rows in per.items() if keep(k) for _, b in rows])))
    return {"cells": len(pct), "df": df, "sd_measured": sd, "sampling_sd": samp,
            "sd_independent": float(np.sqrt(sd ** 2 + samp ** 2)),
            "per_cell_sd": {f"{m} {S}": float(np.std(v, ddof=1)) for (m, S), v in pct.items()}}


def power_table(sd: float, margin: float, ns=range(2, 13)) -> list[dict]:
    return [{"n_seeds": n, "power": stats.power_paired_t(margin, sd, n), "mde": stats.mde_paired_t(sd, n),
             "tost_power": stats.tost_power(margin, sd, n)} for n in ns]


# ---------------------------------------------------------------------------- 3. the cost model
def measure_ratios(cfg) -> dict:
    """Cost ratios on this machine, one thread: toy/image training step; toy cell/image NFE; bootstrap seconds."""
    import torch

    from lib import data, generate, train
    from lib.factory import build_model, schedule_of
    from lib.infra.config import toy_config
    from lib.measure import metrics, toymetrics

    torch.set_num_threads(1)
    tcfg = toy_config(cfg)
    img_step = float(np.median([train.seconds_per_step(cfg, "s2dm", n_steps=4) for _ in range(3)]))
    toy_step = float(np.median([train.seconds_per_step(tcfg, "s2dm", n_steps=20) for _ in range(3)]))
    model = build_model(cfg.model).eval()
    m = cfg.model
    x = torch.randn(cfg.sample.batch_size, m.in_channels, m.resolution, m.resolution)
    t = torch.full((len(x),), 500)
    with torch.no_grad():
        model(x, t)
        t0 = time.perf_counter()
        for _ in range(3):
            model(x, t)
    img_nfe_s = 3 * len(x) / (time.perf_counter() - t0)
    gmm = data.toy_distribution(tcfg.data.dataset)
    toy_model = build_model(tcfg.model).eval()
    t0 = time.perf_counter()
    for S in cfg.toy.sample_steps:  # one toy cell per step count of DDIM: generation + exact metrics
        xs = generate.generate(toy_model, schedule_of(tcfg), (2,), tcfg.sample.n_samples, num_steps=S,
                               batch_size=tcfg.sample.batch_size, progress=False)
        toymetrics.toy_metrics(xs.nan_to_num(), gmm, seed=0)
    toy_cell = (time.perf_counter() - t0) / len(cfg.toy.sample_steps)
    rng = np.random.default_rng(0)
    d = 4 * cfg.eval.classifier_width
    f, ref = rng.standard_normal((cfg.sample.n_samples, d)), rng.standard_normal((5000, d))
    kr = metrics.KIDToReference(ref)
    t0 = time.perf_counter()
    metrics.fd_bootstrap(f, ref, n_boot=200)
    fd200 = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics.fd_bootstrap(f, ref, n_boot=1000)
    metrics.kid_bootstrap(f, None, n_boot=1000, kid_ref=kr)
    cell1000 = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics.compare_bootstrap(f, f[::-1].copy(), ref, n_boot=1000, paired=True)
    cmp1000 = time.perf_counter() - t0
    return {"image_train_step_s": img_step, "toy_train_step_s": toy_step, "image_nfe_per_s": img_nfe_s,
            "toy_cell_s": toy_cell, "cell_scoring_s_200": fd200, "cell_scoring_s_1000": cell1000,
            "compare_s_1000": cmp1000, "feature_dim": d}


def sweep_nfe(cfg) -> tuple[int, int]:
    """NFE per sample of one (seed, arm): the whole sweep, and the headline cells (first sampler, two smallest steps)."""
    full = sum(nfe(m, S, cfg.sample.grid) for m in cfg.sample.methods for S in cfg.sample.steps)
    head = sum(nfe(cfg.sample.methods[0], S, cfg.sample.grid)
               for S in (cfg.experiment.headline_steps or sorted(cfg.sample.steps)[:2]))
    return full, head


def predict(design: dict, base: dict, committed: dict, r: dict, cfg) -> dict:
    """Seconds per notebook of ``design`` by scaling the committed run (``base``) with its work."""
    full, head = sweep_nfe(cfg)
    workers = 2
    # 03: the committed time split into image and toy training by the measured cost per step.
    img_w = lambda d: d["image_runs"] * d["train_steps"] * r["image_train_step_s"]  # noqa: E731
    toy_w = lambda d: d["toy_runs"] * base["toy_steps"] * r["toy_train_step_s"]  # noqa: E731
    k03 = committed["03"] / (img_w(base) + toy_w(base))
    t03 = k03 * (img_w(design) + toy_w(design))

    # 04: toy cells and image network evaluations, split by their measured costs; bootstrap extra.
    def work04(d):
        nfe_total = cfg.sample.n_samples * 2 * (d["sweep_seeds"] * full + (d["seeds"] - d["sweep_seeds"]) * head
                                                + d.get("extra_runs_nfe", 0))
        return d["toy_cells"] * r["toy_cell_s"] + nfe_total / r["image_nfe_per_s"]

    def image_cells(d):
        n_cells = len(cfg.sample.methods) * len(cfg.sample.steps)
        return 2 * (d["sweep_seeds"] * n_cells + (d["seeds"] - d["sweep_seeds"]) * len(
            cfg.experiment.headline_steps or sorted(cfg.sample.steps)[:2]))

    k04 = committed["04"] / work04(base)
    boot_cell = (r["cell_scoring_s_1000"] if design["n_boot"] >= 1000 else r["cell_scoring_s_200"])
    t04 = k04 * work04(design) + image_cells(design) * max(0.0, boot_cell - r["cell_scoring_s_200"]) / workers
    # 05: one paired comparison per (cell, seed) of the sweep.
    t05 = committed["05"] + (image_cells(design) - image_cells(base)) / 2 * r["compare_s_1000"] * base["n_boot"] / 1000 \
        + image_cells(design) / 2 * r["compare_s_1000"] * (design["n_boot"] - base["n_boot"]) / 1000
    # 06: proportional to its seeds; every one of its ~56 cells per seed pays the longer bootstrap.
    per_seed06 = committed["06"] / base["seeds06"]
    t06 = per_seed06 * design["seeds06"] + design["seeds06"] * 56 * max(0.0, boot_cell - r["cell_scoring_s_200"]) / workers
    t06 += design.get("dose_06_s", 0.0)
    out = {"01": committed["01"], "02": committed["02"], "03": t03, "04": t04, "05": t05, "06": t06,
           "07": committed["07"], "08": committed["08"]}
    out["total"] = sum(out.values())
    return out


def designs(cfg) -> dict:
    """The committed run and the candidates (train runs, seeds, sweep seeds, steps, n_boot)."""
    toy_seeds = cfg.toy.n_seeds
    toy_cells = 2 * toy_seeds * len(cfg.sample.methods) * len(cfg.toy.sample_steps)
    full, _ = sweep_nfe(cfg)
    base = dict(seeds=3, sweep_seeds=3, image_runs=6, train_steps=3000, toy_runs=2 * toy_seeds, toy_steps=cfg.toy.steps,
                toy_cells=toy_cells, n_boot=200, seeds06=3)
    # The dose-response work of notebook 06 (another helper): ~3 extra image runs of one strong
    # S²-DM setting, its toy at 2 more strengths (10 toy runs), and those image runs sampled at
    # the headline cells plus 06's cells (priced as one extra seed of 06 each third of a run).
    dose = dict(image_runs_extra=3, toy_runs_extra=2 * toy_seeds)

    _, head = sweep_nfe(cfg)

    def with_dose(d, steps, sampled=full):
        d = dict(d, train_steps=steps)
        d["image_runs"] += dose["image_runs_extra"]
        d["toy_runs"] += dose["toy_runs_extra"]
        d["toy_cells"] += dose["toy_runs_extra"] * len(cfg.sample.methods) * len(cfg.toy.sample_steps)
        d["extra_runs_nfe"] = dose["image_runs_extra"] * sampled / 2  # one arm's runs: half a (seed, arm) pair each
        return d

    target = dict(base, seeds=6, sweep_seeds=3, image_runs=12, n_boot=1000, seeds06=3)
    return {
        "committed (3 seeds, full sweep, 3,000 steps)": base,
        "target: 6 seeds, sweep on 3, 3,000 steps": target,
        "target + dose work, 3,000 steps": with_dose(target, 3000),
        "target + dose work, 2,000 steps": with_dose(target, 2000),
        "target, 2,000 steps (no dose)": dict(target, train_steps=2000),
        "target + dose work sampled at the headline cells only, 2,000 steps": with_dose(target, 2000, head),
        "6 seeds, full sweep on all, 3,000 steps (no dose)": dict(target, sweep_seeds=6),
        "8 seeds, sweep on 3, 2,000 steps, + dose": with_dose(dict(target, seeds=8, image_runs=16), 2000),
        "06 on all 6 seeds instead of 3 (target, 3,000 steps)": dict(target, seeds06=6),
    }


# ---------------------------------------------------------------------------- 4. the issue-27 design
# The last measured run (docs/profiles.md: 49.5 min at d2c830d) as settings over today's cpu profile: the
# sweep's 100-step row, the ε-scaling control on 3 seeds, the dose cells at 250 samples, no DDPM-IP arm.
LAST_MEASURED = {"sample.steps": (10, 20, 50, 100), "experiment.control_seeds": 3, "experiment.dose_ip_match": -1}
LAST_DOSE_SAMPLES = 250


def design_work(cfg, dose_samples: int, ip: bool = True) -> dict:
    """The work of notebooks 03, 04 and 06 at ``cfg``, counted from the code that plans it: training steps of
    the image and toy runs (lib.experiment.runs), network evaluations of the image sweep (lib.experiment.sweep)
    and of the image dose and control cells (lib.experiment.dose), each × its samples."""
    import tempfile

    from lib.experiment import runs, shrinkers, sweep
    from lib.infra.paths import Paths

    with tempfile.TemporaryDirectory() as tmp:
        jobs = {**runs.image_jobs(cfg, Paths(cfg.profile, tmp)), **runs.dose_jobs(cfg, Paths(cfg.profile, tmp))}
    if not ip:
        jobs = {k: j for k, j in jobs.items() if not str(k[1]).startswith("ip-")}
    image = [j for j in jobs.values() if not j.toy]
    toy_dose = [j for j in jobs.values() if j.toy]
    toy_runs = 2 * cfg.toy.n_seeds + len(toy_dose)  # notebook 03 trains the toy baseline and S²-DM beside the doses
    x, methods = cfg.experiment, cfg.sample.methods
    sweep_nfe = 2 * cfg.sample.n_samples * sum(nfe(m, S, cfg.sample.grid) for s in runs.image_seeds(cfg)
                                               for m, S in sweep.seed_cells(cfg, methods, cfg.sample.steps, s))
    per_cells = sum(nfe(m, S, cfg.sample.grid) for m in methods for S in x.related_steps)  # one model, every sampler
    n_doses = len(runs.dose_image_settings(cfg)) + (len(shrinkers.ip_image_doses(cfg)) if ip else 0)
    dose_seeds = set(runs.dose_image_seeds(cfg))
    control_seeds = set(range(min(x.control_seeds, x.n_seeds)))
    dose_nfe = dose_samples * (len(dose_seeds | control_seeds) * per_cells  # the baseline of every seed used
                               + len(dose_seeds) * n_doses * 2 * per_cells  # each dose trained and implied
                               + len(control_seeds) * len(x.control_lambdas) * sum(
                                   nfe("ddim", S, cfg.sample.grid) for S in x.related_steps))
    return {"image_runs": len(image), "image_steps": sum(j.cfg.train.steps for j in image), "toy_runs": toy_runs,
            "toy_steps": toy_runs * cfg.toy.steps, "sweep_nfe": sweep_nfe, "dose_nfe": dose_nfe}


def predict_27(cfg, committed: dict, r: dict) -> dict:
    """Seconds per notebook of today's profile, scaled from the last measured run's per-notebook times: 03 by
    its training steps (image and toy weighted by their measured cost per step), 04 by the sweep's network
    evaluations, 06 by the dose and control cells' evaluations at the rate 04 ran (its neighbour cells as
    measured: they did not change); the toy's dose cells and 05 are taken as measured."""
    from lib.infra.config import with_overrides

    old = design_work(with_overrides(cfg, LAST_MEASURED), LAST_DOSE_SAMPLES, ip=False)
    new = design_work(cfg, cfg.sample.n_samples)
    toy_w = r["toy_train_step_s"] / r["image_train_step_s"]
    k03 = committed["03"] / (old["image_steps"] + toy_w * old["toy_steps"])
    rate = old["sweep_nfe"] / committed["04"]  # image NFE/s of the sweep, scoring included
    t06_other = committed["06"] - old["dose_nfe"] / rate
    out = dict(committed)
    out["03"] = k03 * (new["image_steps"] + toy_w * new["toy_steps"])
    out["04"] = committed["04"] * new["sweep_nfe"] / old["sweep_nfe"]
    out["06"] = t06_other + new["dose_nfe"] / rate
    out["total"] = sum(out[k] for k in NOTEBOOKS)
    return {"last": old, "new": new, "nfe_per_s": rate, "t06_neighbours_s": t06_other, "predicted_s": out,
            "without_the_cut": design_work(with_overrides(cfg, {"sample.steps": LAST_MEASURED["sample.steps"]}),
                                           cfg.sample.n_samples)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figures", default=str(ROOT / "figures" / "cpu"))
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--no-measure", action="store_true")
    args = ap.parse_args(argv)
    cfg = get_config(args.profile)
    fig = Path(args.figures)
    out = ROOT / "bench" / "results" / f"seed_budget_{args.profile}"
    margin = stats.MARGIN_PCT

    per = seed_sds(fig)
    groups = {"all cells": lambda k: True, "10–20 steps": lambda k: k[1] <= 20, "50–100 steps": lambda k: k[1] >= 50,
              "headline (ddim 10, 20)": lambda k: k[0] == "ddim" and k[1] <= 20}
    sds = {g: sd_summary(per, keep) for g, keep in groups.items()}
    committed = committed_times(ROOT / "docs" / "profiles.md")
    if args.no_measure:
        if not out.with_suffix(".json").is_file():
            sys.exit(f"seed_budget: --no-measure needs {out.with_suffix('.json')} from an earlier run; run without it")
        ratios = json.loads(out.with_suffix(".json").read_text())["measured"]
    else:
        t0 = time.perf_counter()
        ratios = measure_ratios(cfg)
        ratios["measure_s"] = time.perf_counter() - t0
    ds = designs(cfg)
    base = ds["committed (3 seeds, full sweep, 3,000 steps)"]
    pred = {name: predict(d, base, committed, ratios, cfg) for name, d in ds.items()}
    sd_head = sds["headline (ddim 10, 20)"]
    tables = {name: power_table(s, margin) for name, s in (
        ("measured pooled SD (all cells)", sds["all cells"]["sd_measured"]),
        ("independent-x_T SD (all cells, conservative)", sds["all cells"]["sd_independent"]),
        ("independent-x_T SD (headline cells, conservative)", sd_head["sd_independent"]))}
    n_tost = {name: stats.n_for_power(lambda n, s=s: stats.tost_power(margin, s, n)) for name, s in (
        ("measured", sds["all cells"]["sd_measured"]), ("independent, all cells", sds["all cells"]["sd_independent"]),
        ("independent, headline", sd_head["sd_independent"]))}
    n_t = {name: stats.n_for_power(lambda n, s=s: stats.power_paired_t(margin, s, n)) for name, s in (
        ("measured", sds["all cells"]["sd_measured"]), ("independent, all cells", sds["all cells"]["sd_independent"]))}

    full, head = sweep_nfe(cfg)
    lines = [f"# Seed budget ({args.profile})", "",
             f"`python bench/seed_budget.py` on {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC from the committed "
             f"`{fig.relative_to(ROOT) if fig.is_relative_to(ROOT) else fig}` tables (3 seeds, one shared x_T set) and the "
             "README's measured per-notebook wall times of `make reproduce PROFILE=cpu`.", "",
             "## 1. The seed SD of the per-seed % difference (FD_clf, baseline − S²-DM)/baseline", "",
             "| cells | n | pooled df | SD measured % | sampling SD per seed % | SD with independent x_T (conservative) % |",
             "|---|---|---|---|---|---|"]
    for g, s in sds.items():
        lines.append(f"| {g} | {s['cells']} | {s['df']} | {s['sd_measured']:.2f} | {s['sampling_sd']:.2f} | "
                     f"{s['sd_independent']:.2f} |")
    lo, hi = (sds["all cells"]["sd_measured"] * np.sqrt(2 / sps.chi2.ppf(q, 2)) for q in (0.975, 0.025))
    lines += ["", "The committed seeds shared their x_T, which removes part of each seed's sampling noise from the "
              "spread; the conservative SD adds it back in full (measured variance + the mean per-seed bootstrap "
              "variance of the % difference). The pooled df overstates the information (the cells of one seed are "
              f"dependent): one cell's SD from 3 seeds has df 2, a 95 % interval of ×{lo / sds['all cells']['sd_measured']:.2f} "
              f"to ×{hi / sds['all cells']['sd_measured']:.2f}. Per cell (measured): "
              + ", ".join(f"{k} {v:.2f}" for k, v in sds["all cells"]["per_cell_sd"].items()) + ".", "",
              "These are FD_clf's SDs from 3,000-step models; KID's (the new headline) and those of the 2,000-step "
              "models are not measured yet: notebook 05's power table recomputes the SD of each metric from the run "
              "it reads, and a larger SD there is the signal to raise `experiment.n_seeds`.", "",
              f"## 2. Power at the paper's smallest claim ({margin} %), two-sided α 0.05, paired t (noncentral t)", "",
              "TOST: equivalence within ±3.27 % at a true effect of 0 (the standard approximation "
              "1 − P(lower test fails) − P(upper test fails)). MDE: the smallest effect detected with 80 % power.", ""]
    for name, rows in tables.items():
        lines += [f"**{name}**", "", "| seeds | power at 3.27 % | MDE % (80 %) | TOST power |", "|---|---|---|---|"]
        lines += [f"| {r['n_seeds']} | {r['power']:.2f} | {r['mde']:.2f} | {r['tost_power']:.2f} |" for r in rows]
        lines.append("")
    lines += ["Seeds for 80 % power: TOST " + ", ".join(f"{k} {v}" for k, v in n_tost.items())
              + "; the t-test at 3.27 % " + ", ".join(f"{k} {v}" for k, v in n_t.items()) + ".",
              f"**Choice: 6 seeds on the headline cells** (DDIM 10 and 20 steps): at the measured SD "
              f"({sds['all cells']['sd_measured']:.2f} %) the TOST has power {stats.tost_power(margin, sds['all cells']['sd_measured'], 6):.2f} "
              f"and the t-test {stats.power_paired_t(margin, sds['all cells']['sd_measured'], 6):.2f} at 3.27 %; at the "
              f"conservative independent-x_T SD of the headline cells ({sd_head['sd_independent']:.2f} %) "
              f"{stats.tost_power(margin, sd_head['sd_independent'], 6):.2f} and {stats.power_paired_t(margin, sd_head['sd_independent'], 6):.2f} "
              f"(MDE {stats.mde_paired_t(sd_head['sd_independent'], 6):.2f} %). The remaining "
              f"{len(cfg.sample.methods) * len(cfg.sample.steps) - 2} cells of the sweep keep 3 seeds (MDE "
              f"{stats.mde_paired_t(sds['all cells']['sd_independent'], 3):.1f} % at the conservative SD): their verdicts "
              "are secondary and the tables say so.", "",
              "## 3. Predicted wall time (s) per notebook, 2 cores (the design history)", "",
              "The method that chose 6 seeds and 2,000 steps (issue 25). Its calibration row is the 3-seed, 3,000-step "
              "run of that time, while the times it now reads are the last measured run's (section 4's base) and the "
              "step counts today's: its rows record how the choice was made and are not today's prediction, which is "
              "section 4.", "",
              f"Work: the whole sweep costs {full} NFE per sample per (seed, arm), the headline cells {head}; "
              f"{cfg.sample.n_samples} samples per cell. Measured here (one thread, this machine under its current "
              f"load; only ratios are used): image training step {ratios['image_train_step_s']:.3f} s, toy step "
              f"{ratios['toy_train_step_s']:.4f} s, image NFE/s {ratios['image_nfe_per_s']:.0f}, toy cell "
              f"{ratios['toy_cell_s']:.2f} s, scoring one image cell (FD + KID) {ratios['cell_scoring_s_200']:.2f} s at 200 "
              f"replicates vs {ratios['cell_scoring_s_1000']:.2f} s at 1,000, a paired comparison at 1,000 "
              f"{ratios['compare_s_1000']:.2f} s.", "",
              "| design | " + " | ".join(NOTEBOOKS) + " | total s | total min |", "|---|" + "---|" * (len(NOTEBOOKS) + 2)]
    for name, p in pred.items():
        lines.append(f"| {name} | " + " | ".join(f"{p[k]:.0f}" for k in NOTEBOOKS) + f" | {p['total']:.0f} | {p['total'] / 60:.1f} |")
    lines += ["", "The committed row reproduces the README's measured times by construction (the calibration). "
              "The dose rows assume ~3 extra image runs of one strong S²-DM setting sampled over the whole sweep "
              "(or, where named, at the headline cells only) and 10 extra toy runs with their toy cells; the dose "
              "analysis' own cost in notebook 06 is not included. Training runs "
              "two at a time (one thread each), so an odd number of runs leaves one core idle at the end: add up "
              "to one run's time (~" + f"{committed['03'] / 6 / 2 * 1:.0f} s at 3,000 steps)." , ""]
    chosen = pred["target + dose work, 2,000 steps"]
    lines += ["**Design chosen for `cpu`:** `experiment.n_seeds = 6`, `experiment.sweep_seeds = 3`, "
              "`experiment.headline_steps = (10, 20)`, `eval.n_boot = 1000`, `train.steps = 2000`: "
              f"{pred['target + dose work, 3,000 steps']['total'] / 60:.0f} min predicted at 3,000 steps with the dose "
              f"work, over the 60-minute ceiling, so training drops to 2,000 steps (twice 1/(1 − ema_decay)): "
              f"{chosen['total'] / 60:.0f} min predicted (" + ", ".join(f"{k} {chosen[k]:.0f} s" for k in NOTEBOOKS)
              + f"), {pred['target + dose work sampled at the headline cells only, 2,000 steps']['total'] / 60:.0f} min "
              "if the dose runs are sampled at the headline cells only; without the dose work "
              f"{pred['target, 2,000 steps (no dose)']['total'] / 60:.0f} min.", ""]
    p27 = predict_27(cfg, committed, ratios)
    t = p27["predicted_s"]
    cut = p27["without_the_cut"]
    t04_cut = committed["04"] * cut["sweep_nfe"] / p27["last"]["sweep_nfe"]
    lines += ["## 4. The issue-27 design (DDPM-IP runs, the control on every seed, dose cells at 500 samples)", "",
              "Scaled from the last measured run (docs/profiles.md; its settings over today's profile: "
              f"`{LAST_MEASURED}`, dose cells at {LAST_DOSE_SAMPLES} samples, no IP arm) by the work each notebook "
              "does, counted from the code that plans it (`design_work`):", "",
              "| work | last measured run | this profile |", "|---|---|---|"]
    for k in ("image_runs", "image_steps", "toy_runs", "toy_steps", "sweep_nfe", "dose_nfe"):
        lines.append(f"| {k} | {p27['last'][k]:,} | {p27['new'][k]:,} |")
    lines += ["", f"At the sweep's measured rate ({p27['nfe_per_s']:.0f} image NFE/s with scoring, 2 workers) and "
              f"06's neighbour cells as measured ({p27['t06_neighbours_s']:.0f} s): "
              + ", ".join(f"{k} {t[k]:.0f} s" for k in NOTEBOOKS) + f", **{t['total'] / 60:.0f} min** predicted. "
              f"Keeping the sweep's 100-step row (exploratory cells) would add {t04_cut - t['04']:.0f} s "
              f"({(t['total'] + t04_cut - t['04']) / 60:.0f} min): over the budget's margin, so it is cut; the primary "
              "family (DDIM 10 and 20 on 6 seeds) is untouched. The toy's dose cells (5 doses × 5 seeds) are not "
              "scaled (they ran within 06's measured time at 3 doses; seconds each).", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"margin_pct": margin, "sd": sds, "power": tables, "n_tost_80": n_tost,
                                                    "n_t_80": n_t, "measured": ratios, "committed_s": committed,
                                                    "designs": ds, "predicted_s": pred, "nfe_full": full,
                                                    "nfe_headline": head, "issue27": p27}, indent=1, default=str) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
