"""The dose–response test of the shrinkage explanation (notebook 06), its positive control, and the ε-scaling control.

docs/method.md §1: the optimum of S²-DM's loss τL_0 + (1−τ)L_skip is the baseline's optimum divided by the
implied λ_t = (τ + (1−τ)c_t²)/τ; §1b: DDPM-IP's (input ε + γξ, target ε) is the clean optimum divided by
λ_t = 1 + γ²(1−ᾱ_t)/(ᾱ_t σ² + 1 − ᾱ_t) for Gaussian data (lib.experiment.shrinkers). If a training-side
shrinker does nothing but that, then at *every* dose, for every sampler and step count,

    observed  = metric(trained arm) − metric(baseline)              (per training seed)
    predicted = metric(baseline ÷ implied λ_t) − metric(baseline)   (lib.related.epsscale)

agree, and their difference observed − predicted = metric(trained) − metric(baseline ÷ λ_t) is 0. Each is
a per-seed paired difference (seed s of every model shares train.seed = s and the initial noise x_T of
seed s), combined over training seeds by the Student-t interval of lib.measure.stats.seed_interval (it
covers seed-to-seed variation and each seed's sampling noise, since x_T differs by seed); beside each
difference its MDE (80 % power, two-sided α 0.05, from the seed SD of the difference), what a "no
difference" could have excluded. Images are measured on KID (the headline, ``sample.n_samples`` samples)
and FD_clf from the same samples.

The positive control (:func:`positive_control`): where the implied scaling helps (its predicted interval
below 0), the fraction of that gain each trained arm reaches, observed/predicted, with Fieller's interval
over seeds. The ε-scaling control asks whether *any* constant λ (λ < 1 included) helps the baseline, DDIM,
on every control seed, with each cell's MDE.
"""
from __future__ import annotations


import numpy as np
import torch

from lib import data, generate
from lib.experiment import runs, shrinkers
from lib.experiment.evaluate import ImageEvaluator, image_cell, sample_seed
from lib.experiment.shrinkers import implied_lambda  # noqa: F401  (the S²-DM scaling, re-exported for notebooks)
from lib.factory import schedule_of
from lib.infra import processes
from lib.infra.config import Config, toy_config, with_overrides
from lib.infra.paths import Paths
from lib.measure import stats, toymetrics
from lib.related import epsscale
from lib.experiment.workers import call_in_workers
from lib import samplers

TOY_METRICS = ("mmd", "nll")
KEY = ("model", "metric", "arm", "skip", "tau", "gamma", "sampler", "steps")  # one dose cell; "" where n/a
DOSE_COLUMNS = (*KEY[:6], "lambda_max", *KEY[6:], "predicted", "predicted_lo", "predicted_hi", "observed", "observed_lo",
                "observed_hi", "difference", "difference_lo", "difference_hi", "difference_mde", "n_seeds", "excludes_0")
SEED_COLUMNS = (*KEY, "seed", "baseline", "trained", "implied")
CONTROL_COLUMNS = ("metric", "lambda", "sampler", "steps", "baseline", "diff", "lo", "hi", "mde", "rel %", "rel lo %",
                   "rel hi %", "mde %", "n_seeds", "helps")
CONTROL_SEED_COLUMNS = ("metric", "lambda", "sampler", "steps", "seed", "baseline", "scaled")
POSITIVE_COLUMNS = ("arm", "model", "metric", "skip", "tau", "gamma", "sampler", "steps", "predicted", "observed",
                    "fraction", "fraction_lo", "fraction_hi", "n_seeds", "interval")


# ---------------------------------------------------------------------------- the doses
def strengths(cfg: Config, steps=None) -> list[dict]:
    """Per dose (S²-DM settings, then IP's γ per model): max λ_t − 1 over all t, mean λ_t − 1 over the DDIM
    grid of each step count, and max λ_t − 1 relative to the profile's own (loss.skip, loss.tau)."""
    sch = schedule_of(cfg)
    t_all = torch.arange(cfg.diffusion.T, dtype=torch.float64)
    steps = tuple(steps or cfg.experiment.related_steps)
    ref = implied_lambda(sch, cfg.loss.skip, cfg.loss.tau, t_all).max().item() - 1
    doses = [("s2dm", "image and toy", skip, tau, "", runs.dose_label(cfg, skip, tau),
              epsscale.implied_s2dm(sch, skip, tau)) for skip, tau in runs.dose_settings(cfg)]
    doses += [("ip", model, "", "", g, shrinkers.ip_arm(g), shrinkers.ip_lambda(cfg, model, g))
              for model in ("image", "toy") for g in shrinkers.ip_doses(cfg, model)]
    out = []
    for arm, model, skip, tau, gamma, run, lam in doses:
        row = {"arm": arm, "model": model, "skip": skip, "tau": tau, "gamma": gamma, "run": run,
               "lambda_max − 1": float(lam(t_all).max()) - 1}
        row["× profile's"] = row["lambda_max − 1"] / ref if ref > 0 else float("nan")
        for S in steps:
            grid = sch.timesteps(S, samplers.grid_for("ddim", cfg.sample.grid)).to(torch.float64)
            row[f"mean λ−1 (DDIM {S})"] = float((lam(grid) - 1).mean())
        out.append(row)
    return out


def sample_config(cfg: Config, seed: int) -> Config:
    """The toy sample set of training seed ``seed``: its own x_T (lib.experiment.evaluate.sample_seed), shared
    by every model of that seed, so the pairing stays within a seed and the seeds' sampling noise is
    independent. (Image cells get theirs inside evaluate.image_cell from the training seed.)"""
    return with_overrides(cfg, {"sample.seed": sample_seed(cfg, seed)})


# ---------------------------------------------------------------------------- tables from per-seed values
def _interval(values, level):
    ci = stats.seed_interval(values, level)
    return ci["mean"], ci["lo"], ci["hi"]


def _mde(values, level: float) -> float:
    v = np.asarray(values, dtype=np.float64)
    sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return stats.mde_paired_t(sd, len(v), 0.8, 1 - level) if len(v) > 1 and sd > 0 else float("nan")


def _groups(per_seed: list[dict], key) -> dict:
    out = {}
    for r in per_seed:
        out.setdefault(tuple(r[k] for k in key), []).append(r)
    for k, rs in out.items():
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seed listed twice for {k}: {seeds}")
    return out


def dose_table(per_seed: list[dict], level: float = 0.95) -> list[dict]:
    """One row per dose cell (:data:`KEY`) from per-seed rows holding ``baseline``, ``trained`` (the arm
    trained at that dose) and ``implied`` (baseline ÷ its implied λ_t): observed = trained − baseline,
    predicted = implied − baseline, difference = observed − predicted, each the mean over training seeds
    with its paired Student-t interval (lib.measure.stats.seed_interval), and the difference's MDE."""
    out = []
    for key, rs in _groups(per_seed, KEY).items():
        row = dict(zip(KEY, key))
        row["lambda_max"] = rs[0].get("lambda_max", float("nan"))
        for name, vals in (("observed", [r["trained"] - r["baseline"] for r in rs]),
                           ("predicted", [r["implied"] - r["baseline"] for r in rs]),
                           ("difference", [r["trained"] - r["implied"] for r in rs])):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _interval(vals, level)
        row["difference_mde"] = _mde([r["trained"] - r["implied"] for r in rs], level)
        row["n_seeds"] = len(rs)
        row["excludes_0"] = stats.excludes_zero(row["difference_lo"], row["difference_hi"])
        obs = [r["trained"] - r["baseline"] for r in rs]
        row["observed_sd"] = float(np.std(obs, ddof=1)) if len(rs) > 1 else float("nan")  # for detectable()
        out.append(row)
    return out


def _dose(r) -> str:
    return f"skip {r['skip']} tau {r['tau']:g}" if r["arm"] == "s2dm" else f"{r['arm']} gamma {r['gamma']:g}"


def detectable(rows: list[dict], level: float = 0.95, power: float = 0.8) -> list[str]:
    """What the image seeds could see, one line per cell with ≥ 2 seeds: the seed SD of observed and the
    minimum detectable effect of the paired t-test at ``power`` (lib.measure.stats.mde_paired_t, noncentral
    t) beside the predicted effect (below the MDE: the test could not have told it from zero)."""
    out = []
    for r in (r for r in rows if r["model"] == "image" and r["n_seeds"] >= 2):
        mde = stats.mde_paired_t(r["observed_sd"], r["n_seeds"], power, 1 - level)
        out.append(f"{r['metric']} {_dose(r)} {r['sampler']}-{r['steps']}: seed SD {r['observed_sd']:.3g}, "
                   f"MDE({power:.0%}) {mde:.3g}, predicted {r['predicted']:+.3g}"
                   f"{'' if abs(r['predicted']) >= mde else ' (below the MDE)'}")
    return out


def answer(rows: list[dict]) -> list[str]:
    """The dose–response table in words, one line per (model, metric, dose): in how many sampler × step
    cells the interval of observed − predicted excludes 0 (the trained model does something its implied
    scaling does not), the mean observed and predicted effects and the median MDE of the difference."""
    out = []
    for key in dict.fromkeys(tuple(r[k] for k in KEY[:6]) for r in rows):
        g = [r for r in rows if tuple(r[k] for k in KEY[:6]) == key]
        decided = [r for r in g if r["excludes_0"]]
        where = ", ".join(f"{r['sampler']}-{r['steps']} ({r['difference']:+.3g})" for r in decided)
        mde = np.nanmedian([r.get("difference_mde", np.nan) for r in g]) if any(
            np.isfinite(r.get("difference_mde", np.nan)) for r in g) else float("nan")
        out.append(f"{key[0]} {key[1]}, {_dose(g[0])} (λ_max − 1 = {g[0]['lambda_max']:.3g}, {g[0]['n_seeds']} seeds): "
                   f"observed − predicted excludes 0 in {len(decided)} of {len(g)} cells"
                   f"{' [' + where + ']' if where else ''}; mean observed {np.mean([r['observed'] for r in g]):+.3g}, "
                   f"mean predicted {np.mean([r['predicted'] for r in g]):+.3g}, median MDE of the difference {mde:.3g}")
    return out


def positive_control(per_seed: list[dict], level: float = 0.95) -> list[dict]:
    """Where the implied scaling helps (the predicted interval over seeds lies below 0: a lower metric), the
    fraction of that gain the trained arm reaches, observed/predicted = mean(trained − baseline)/mean(implied −
    baseline), with Fieller's interval over seeds (lib.measure.stats.fieller_ratio; nan where unbounded)."""
    out = []
    for key, rs in _groups(per_seed, KEY).items():
        if len(rs) < 2:
            continue
        obs = [r["trained"] - r["baseline"] for r in rs]
        pred = [r["implied"] - r["baseline"] for r in rs]
        p = stats.seed_interval(pred, level)
        if not p["hi"] < 0:
            continue
        f = stats.fieller_ratio(obs, pred, level)
        out.append({**dict(zip(KEY, key)), "predicted": p["mean"], "observed": float(np.mean(obs)),
                    "fraction": f["ratio"], "fraction_lo": f["lo"], "fraction_hi": f["hi"], "n_seeds": len(rs),
                    "interval": f"Fieller {level:.0%} over {len(rs)} seeds"})
    return out


def control_table(per_seed: list[dict], level: float = 0.95) -> list[dict]:
    """Per (metric, λ, sampler, steps): metric(baseline ÷ λ) − metric(baseline) over seeds with its t-interval,
    absolute and in % of the baseline, and the MDE of the paired t-test (80 % power, two-sided 1 − level);
    ``helps`` when the whole interval lies below 0 (lower metric is better)."""
    out = []
    for key, rs in _groups(per_seed, ("metric", "lambda", "sampler", "steps")).items():
        diffs = [r["scaled"] - r["baseline"] for r in rs]
        rel = [100 * (r["scaled"] - r["baseline"]) / r["baseline"] for r in rs]
        d, lo, hi = _interval(diffs, level)
        rm, rlo, rhi = _interval(rel, level)
        out.append({"metric": key[0], "lambda": key[1], "sampler": key[2], "steps": key[3],
                    "baseline": float(np.mean([r["baseline"] for r in rs])), "diff": d, "lo": lo, "hi": hi,
                    "mde": _mde(diffs, level), "rel %": rm, "rel lo %": rlo, "rel hi %": rhi, "mde %": _mde(rel, level),
                    "n_seeds": len(rs), "helps": bool(hi < 0)})
    return out


# ---------------------------------------------------------------------------- the tables of notebook 06
def save_dose_tables(per_seed: list[dict], out, level: float) -> tuple[list[dict], list[dict]]:
    """Write 06_dose_seeds, 06_dose_response and 06_positive_control; returns (dose rows, positive control rows)."""
    from lib.experiment import report

    rows, positive = dose_table(per_seed, level), positive_control(per_seed, level)
    report.save_table(per_seed, out, "06_dose_seeds", columns=SEED_COLUMNS,
                      title="Dose–response per training seed: baseline, the trained arm at its dose, baseline ÷ its implied λ_t")
    report.show(report.save_table(rows, out, "06_dose_response", columns=DOSE_COLUMNS,
                                  title=f"Dose–response: observed = trained arm (S²-DM or IP) − baseline, predicted = baseline ÷ "
                                        f"implied λ_t − baseline, difference = observed − predicted; mean over seeds "
                                        f"[{level:.0%} paired t-interval over seeds]; difference_mde: its MDE at 80 % power "
                                        f"(two-sided α {1 - level:g}, per cell, uncorrected)"))
    report.show(report.save_table(positive, out, "06_positive_control", columns=POSITIVE_COLUMNS,
                                  title="The positive control: where the implied scaling helps (predicted interval below 0), "
                                        "the fraction of its gain each trained arm reaches, observed/predicted [Fieller "
                                        "interval over seeds]"))
    return rows, positive


def save_control_tables(per_seed: list[dict], out, level: float, n_samples: int, fd_name: str) -> list[dict]:
    """Write 06_eps_control_seeds and 06_eps_control; returns the control rows."""
    from lib.experiment import report

    control = control_table(per_seed, level)
    report.save_table(per_seed, out, "06_eps_control_seeds", columns=CONTROL_SEED_COLUMNS,
                      title="Constant ε scaling per training seed: the baseline and baseline ÷ λ, DDIM")
    report.show(report.save_table(control, out, "06_eps_control", columns=CONTROL_COLUMNS,
                                  title=f"Constant ε scaling on the baseline (DDIM), KID and {fd_name} at {n_samples} samples: "
                                        f"metric(baseline ÷ λ) − metric(baseline), mean over seeds [{level:.0%} t-interval], "
                                        f"in % of the baseline [interval]; mde: 80 % power, two-sided α {1 - level:g} per "
                                        f"cell; < 0: λ helps"))
    return control


def control_excludes(control: list[dict], metric: str = "KID") -> list[str]:
    """Per control cell of ``metric``: whether λ helps, else the largest gain it leaves open (its interval's lower
    end in %) beside its MDE."""
    return [f"{metric} λ {r['lambda']:g} DDIM-{r['steps']}: " + ("helps" if r["helps"] else
            f"excludes a gain above {max(0.0, -r['rel lo %']):.1f} %") + f" (MDE {r['mde %']:.1f} %, {r['n_seeds']} seeds)"
            for r in control if r["metric"] == metric]


# ---------------------------------------------------------------------------- the cells
def _doses(cfg: Config, model: str, sch, image: bool):
    """(arm, skip, tau, gamma, run name, implied λ) of every trained dose of ``model`` (its run: runs.image_run or
    runs.toy_run of the name and seed)."""
    s2 = runs.dose_image_settings(cfg) if image else runs.dose_settings(cfg)
    out = [("s2dm", skip, tau, "", runs.dose_label(cfg, skip, tau), epsscale.implied_s2dm(sch, skip, tau)) for skip, tau in s2]
    ip = shrinkers.ip_image_doses(cfg) if image else shrinkers.ip_doses(cfg, "toy")
    return out + [("ip", "", "", g, shrinkers.ip_arm(g), shrinkers.ip_lambda(cfg, model, g)) for g in ip]


def image_seed_rows(cfg: Config, paths: Paths, seed: int, ev: ImageEvaluator | None = None) -> dict:
    """Training seed ``seed``'s image cells at the profile's ``sample.n_samples``, KID and FD from the same
    samples: every sampler of sample.methods at experiment.related_steps on the baseline, on every image dose
    (S²-DM at the image settings, IP at its image doses) and on the baseline ÷ each dose's implied λ_t (dose
    seeds); and the ε-scaling control (constant λ, DDIM; control seeds). Returns {"dose": …, "control": …}."""
    c = cfg  # image_cell draws training seed ``seed``'s own x_T (evaluate.sample_seed)
    ev = ev or ImageEvaluator(c, paths, progress=False)
    sch = schedule_of(c)
    x = cfg.experiment
    names = ("KID", ev.name)
    base = generate.load_model(runs.image_run(paths, "baseline", seed), ev.device)[0]

    def measure(model, arm, label, method, S):
        r = image_cell(ev, model, c, arm, method, S, seed=seed, label="dose-" + label, progress=False)
        return {k: r[k] for k in names}

    methods, steps = list(c.sample.methods), list(x.related_steps)
    b = {(m, S): measure(base, "baseline", m, m, S) for m in methods for S in steps}
    dose, control = [], []
    if seed in runs.dose_image_seeds(cfg):
        for arm, skip, tau, gamma, name, lam in _doses(cfg, "image", sch, image=True):
            model = generate.load_model(runs.image_run(paths, name, seed), ev.device)[0]
            scaled = epsscale.EpsScaled(base, lam)
            lam_max = float(lam(torch.arange(c.diffusion.T)).max()) - 1
            for m in methods:
                for S in steps:
                    tr, im = measure(model, name, m, m, S), measure(scaled, "baseline", f"{m}+{lam.label}", m, S)
                    dose += [{"model": "image", "metric": k, "arm": arm, "skip": skip, "tau": tau, "gamma": gamma,
                              "lambda_max": lam_max, "sampler": m, "steps": S, "seed": seed, "baseline": b[m, S][k],
                              "trained": tr[k], "implied": im[k]} for k in names]
    if seed < min(x.control_seeds, x.n_seeds):
        for v in x.control_lambdas:
            lam = epsscale.Constant(v)
            for S in steps:
                ref = b["ddim", S] if ("ddim", S) in b else measure(base, "baseline", "ddim", "ddim", S)
                sc = measure(epsscale.EpsScaled(base, lam), "baseline", f"ddim+{lam.label}", "ddim", S)
                control += [{"metric": k, "lambda": v, "sampler": "ddim", "steps": S, "seed": seed, "baseline": ref[k],
                             "scaled": sc[k]} for k in names]
    return {"dose": dose, "control": control}


def toy_seed_rows(cfg: Config, paths: Paths, seed: int) -> list[dict]:
    """Toy seed ``seed`` at every dose (S²-DM at every setting, IP at every γ): exact toy metrics
    (lib.measure.toymetrics: MMD² against the known mixture on one reference set per seed, mean −log p under
    the true density) of the baseline, the trained arm and the baseline ÷ its implied λ_t, every sampler of
    sample.methods at experiment.related_steps, from the seed's own x_T."""
    from lib.experiment.related_sweep import Plan

    tcfg = sample_config(toy_config(Plan.of(cfg).cfg), seed)
    gmm, sch = data.toy_distribution(tcfg.data.dataset), schedule_of(tcfg)
    methods, steps = list(cfg.sample.methods), list(cfg.experiment.related_steps)

    # One reference set per seed, as large as the sample set, shared by every model of the seed: the MMD²
    # differences are paired on it too, and it costs a quarter of toy_metrics' default 2,000-point reference.
    ref = gmm.sample(tcfg.sample.n_samples, generator=torch.Generator().manual_seed(10_000 + seed))

    def metrics(model, m, S):
        x = generate.generate(model, sch, (2,), tcfg.sample.n_samples, method=m, num_steps=S,
                              grid=samplers.grid_for(m, tcfg.sample.grid), batch_size=tcfg.sample.batch_size,
                              seed=tcfg.sample.seed, progress=False)
        r = toymetrics.toy_metrics(x, gmm, ref_samples=ref, seed=seed)
        return {k: float(r[k]) for k in TOY_METRICS}

    base = generate.load_model(runs.toy_run(paths, "baseline", seed))[0]
    b = {(m, S): metrics(base, m, S) for m in methods for S in steps}
    rows = []
    for arm, skip, tau, gamma, name, lam in _doses(cfg, "toy", sch, image=False):
        model = generate.load_model(runs.toy_run(paths, name, seed))[0]
        scaled = epsscale.EpsScaled(base, lam)
        lam_max = float(lam(torch.arange(tcfg.diffusion.T)).max()) - 1
        for m in methods:
            for S in steps:
                tr, im = metrics(model, m, S), metrics(scaled, m, S)
                rows += [{"model": "toy", "metric": k, "arm": arm, "skip": skip, "tau": tau, "gamma": gamma,
                          "lambda_max": lam_max, "sampler": m, "steps": S, "seed": seed, "baseline": b[m, S][k],
                          "trained": tr[k], "implied": im[k]} for k in TOY_METRICS]
    return rows


def run_cells(cfg: Config, paths: Paths, progress: bool = True) -> dict:
    """Every toy seed and every image seed of the dose–response test and the control, each a job in its own
    single-threaded process (:func:`seed_job` through lib.experiment.workers.call_in_workers; in this
    process when experiment.workers = 1). Returns {"dose": per-seed rows (toy and image), "control": per-seed rows}."""
    runs.require_image_runs(paths, cfg)
    runs.require_dose_runs(paths, cfg)
    x = cfg.experiment
    image_seeds = sorted(set(runs.dose_image_seeds(cfg)) | set(range(min(x.control_seeds, x.n_seeds))))
    jobs = [("images", s) for s in image_seeds] + [("toy", s) for s in range(cfg.toy.n_seeds)]
    calls = {(kind, s): {**processes.job_context(cfg, paths), "kind": kind, "seed": s} for kind, s in jobs}
    done, failures = call_in_workers(seed_job, calls, x.workers, progress=progress,
                                               describe=lambda k: f"06 dose cells, {k[0]} seed {k[1]}")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(jobs)} dose jobs failed:\n" + "\n".join(failures))
    results = [done[k] for k in jobs]
    return {"dose": [r for res in results for r in res["dose"]], "control": [r for res in results for r in res["control"]]}


def seed_job(config: dict, profile: str, root: str, kind: str, seed: int) -> dict:
    """One seed's cells as a worker call (lib.experiment.workers.call_in_workers)."""
    cfg, paths = processes.job_context_of(config, profile, root)
    return _job(cfg, paths, kind, seed)


def _job(cfg: Config, paths: Paths, kind: str, seed: int) -> dict:
    if kind == "toy":
        return {"dose": toy_seed_rows(cfg, paths, seed), "control": []}
    return image_seed_rows(cfg, paths, seed)
