"""The dose–response test of the shrinkage explanation (notebook 06), and the ε-scaling positive control.

docs/method.md §1: the optimum of S²-DM's loss τL_0 + (1−τ)L_skip is the baseline's optimum times
τ/(τ + (1−τ)c_t²), c_t² = (1−α_skip)/α_skip, i.e. the baseline divided by the implied

    λ_t = (τ + (1−τ)c_t²)/τ        (λ_t = 1 for t < skip).

If that is all the loss does, then at *every* loss strength (skip, τ), for every sampler and step count,

    observed  = metric(trained S²-DM) − metric(baseline)            (per training seed)
    predicted = metric(baseline ÷ implied λ_t) − metric(baseline)   (lib.related.epsscale.ImpliedS2DM)

agree, and their difference observed − predicted = metric(S²-DM) − metric(baseline ÷ λ_t) is 0. Each
is a per-seed paired difference (seed s of every model shares train.seed = s and the initial noise x_T
of seed s), combined over training seeds by the Student-t interval of lib.measure.stats.seed_interval
(the interval covers seed-to-seed variation and each seed's sampling noise, since x_T differs by seed).

The positive control asks whether *any* ε scaling helps at this scale: constant λ (λ < 1 included) on
the baseline, DDIM, ``metric(baseline ÷ λ) − metric(baseline)`` per seed with its t-interval.
"""
from __future__ import annotations


import numpy as np
import torch

from lib import data, generate
from lib.experiment import runs
from lib.experiment.evaluate import ImageEvaluator, image_cell, sample_seed
from lib.factory import schedule_of
from lib.infra import processes
from lib.infra.config import Config, toy_config, with_overrides
from lib.infra.paths import Paths
from lib.measure import stats, toymetrics
from lib.related import epsscale
from lib.experiment.workers import call_in_workers
from lib import samplers

TOY_METRICS = ("mmd", "nll")
DOSE_COLUMNS = ("model", "metric", "skip", "tau", "lambda_max", "sampler", "steps", "predicted", "predicted_lo",
                "predicted_hi", "observed", "observed_lo", "observed_hi", "difference", "difference_lo",
                "difference_hi", "n_seeds", "excludes_0")
CONTROL_COLUMNS = ("lambda", "sampler", "steps", "baseline", "diff", "lo", "hi", "rel %", "n_seeds", "helps")


# ---------------------------------------------------------------------------- the implied scaling
def implied_lambda(schedule, skip: int, tau: float, t) -> torch.Tensor:
    """λ_t = (τ + (1−τ)c_t²)/τ (1 for t < skip), float64: 1 / Schedule.shrinkage (docs/method.md §1)."""
    return epsscale.implied_s2dm(schedule, skip, tau)(torch.as_tensor(t, dtype=torch.float64))


def strengths(cfg: Config, steps=None) -> list[dict]:
    """Per dose setting: max λ_t − 1 over all t, mean λ_t − 1 over the DDIM grid of each step count, and
    both relative to the profile's own (loss.skip, loss.tau)."""
    sch = schedule_of(cfg)
    t_all = torch.arange(cfg.diffusion.T, dtype=torch.float64)
    steps = tuple(steps or cfg.experiment.related_steps)
    ref = implied_lambda(sch, cfg.loss.skip, cfg.loss.tau, t_all).max().item() - 1
    out = []
    for skip, tau in runs.dose_settings(cfg):
        row = {"skip": skip, "tau": tau, "run": runs.dose_label(cfg, skip, tau),
               "lambda_max − 1": implied_lambda(sch, skip, tau, t_all).max().item() - 1}
        row["× profile's"] = row["lambda_max − 1"] / ref if ref > 0 else float("nan")
        for S in steps:
            grid = sch.timesteps(S, samplers.grid_for("ddim", cfg.sample.grid)).to(torch.float64)
            row[f"mean λ−1 (DDIM {S})"] = (implied_lambda(sch, skip, tau, grid) - 1).mean().item()
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


def dose_table(per_seed: list[dict], level: float = 0.95) -> list[dict]:
    """One row per (model, metric, skip, tau, sampler, steps) from per-seed rows holding ``baseline``,
    ``s2dm`` (trained at that strength) and ``implied`` (baseline ÷ implied λ_t) metric values:
    observed = s2dm − baseline, predicted = implied − baseline, difference = observed − predicted, each
    the mean over training seeds with its paired Student-t interval (lib.measure.stats.seed_interval)."""
    keys = list(dict.fromkeys((r["model"], r["metric"], r["skip"], r["tau"], r["sampler"], r["steps"]) for r in per_seed))
    out = []
    for key in keys:
        rs = [r for r in per_seed if (r["model"], r["metric"], r["skip"], r["tau"], r["sampler"], r["steps"]) == key]
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"dose_table: seed listed twice for {key}: {seeds}")
        row = dict(zip(("model", "metric", "skip", "tau", "sampler", "steps"), key))
        row["lambda_max"] = rs[0].get("lambda_max", float("nan"))
        for name, vals in (("observed", [r["s2dm"] - r["baseline"] for r in rs]),
                           ("predicted", [r["implied"] - r["baseline"] for r in rs]),
                           ("difference", [r["s2dm"] - r["implied"] for r in rs])):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _interval(vals, level)
        row["n_seeds"] = len(rs)
        row["excludes_0"] = stats.excludes_zero(row["difference_lo"], row["difference_hi"])
        obs = [r["s2dm"] - r["baseline"] for r in rs]
        row["observed_sd"] = float(np.std(obs, ddof=1)) if len(rs) > 1 else float("nan")  # for detectable()
        out.append(row)
    return out


def detectable(rows: list[dict], level: float = 0.95, power: float = 0.8) -> list[str]:
    """What the image seeds could see, one line per cell with ≥ 2 seeds: the seed SD of observed and the
    minimum detectable effect of the paired t-test at ``power`` (lib.measure.stats.mde_paired_t, noncentral
    t) beside the predicted effect (below the MDE: the test could not have told it from zero)."""
    out = []
    for r in (r for r in rows if r["model"] == "image" and r["n_seeds"] >= 2):
        mde = stats.mde_paired_t(r["observed_sd"], r["n_seeds"], power, 1 - level)
        out.append(f"skip {r['skip']} tau {r['tau']} {r['sampler']}-{r['steps']}: seed SD {r['observed_sd']:.3f}, "
                   f"MDE({power:.0%}) {mde:.3f}, predicted {r['predicted']:+.3f}"
                   f"{'' if abs(r['predicted']) >= mde else ' (below the MDE)'}")
    return out


def answer(rows: list[dict]) -> list[str]:
    """The dose–response table in words, one line per (model, metric, skip, τ): in how many sampler × step
    cells the interval of observed − predicted excludes 0 (the trained model does something its implied
    scaling does not), and the mean observed and predicted effects."""
    out = []
    for key in dict.fromkeys((r["model"], r["metric"], r["skip"], r["tau"]) for r in rows):
        g = [r for r in rows if (r["model"], r["metric"], r["skip"], r["tau"]) == key]
        decided = [r for r in g if r["excludes_0"]]
        where = ", ".join(f"{r['sampler']}-{r['steps']} ({r['difference']:+.3g})" for r in decided)
        out.append(f"{key[0]} {key[1]}, skip {key[2]}, tau {key[3]:g} (λ_max − 1 = {g[0]['lambda_max']:.3g}, "
                   f"{g[0]['n_seeds']} seeds): observed − predicted excludes 0 in {len(decided)} of {len(g)} cells"
                   f"{' [' + where + ']' if where else ''}; mean observed {np.mean([r['observed'] for r in g]):+.3g}, "
                   f"mean predicted {np.mean([r['predicted'] for r in g]):+.3g}")
    return out


def control_table(per_seed: list[dict], level: float = 0.95) -> list[dict]:
    """Per (λ, sampler, steps): metric(baseline ÷ λ) − metric(baseline) over seeds with its t-interval;
    ``helps`` when the whole interval lies below 0 (lower metric is better)."""
    keys = list(dict.fromkeys((r["lambda"], r["sampler"], r["steps"]) for r in per_seed))
    out = []
    for key in keys:
        rs = [r for r in per_seed if (r["lambda"], r["sampler"], r["steps"]) == key]
        d, lo, hi = _interval([r["scaled"] - r["baseline"] for r in rs], level)
        rel, _, _ = _interval([100 * (r["scaled"] - r["baseline"]) / r["baseline"] for r in rs], level)
        out.append({"lambda": key[0], "sampler": key[1], "steps": key[2],
                    "baseline": float(np.mean([r["baseline"] for r in rs])), "diff": d, "lo": lo, "hi": hi,
                    "rel %": rel, "n_seeds": len(rs), "helps": bool(hi < 0)})
    return out


# ---------------------------------------------------------------------------- the cells
def _plan_cfg(cfg: Config) -> Config:
    from lib.experiment.related_sweep import Plan

    return Plan.of(cfg).cfg


def image_seed_rows(cfg: Config, paths: Paths, seed: int, ev: ImageEvaluator | None = None) -> dict:
    """Training seed ``seed``'s image cells: every sampler of sample.methods at experiment.related_steps on
    the baseline, on S²-DM at every image dose setting and on the baseline ÷ its implied λ_t; and the
    positive control (constant λ, DDIM). Returns {"dose": per-seed rows, "control": per-seed rows}."""
    pc = _plan_cfg(cfg)
    ev = ev or ImageEvaluator(pc, paths, progress=False)
    c = pc  # image_cell draws training seed ``seed``'s own x_T (evaluate.sample_seed)
    sch = schedule_of(c)
    x = cfg.experiment
    base = generate.load_model(runs.image_run(paths, "baseline", seed), ev.device)[0]

    def fd(model, arm, label, method, S):
        return image_cell(ev, model, c, arm, method, S, seed=seed, label="dose-" + label, progress=False)[ev.name]

    methods, steps = list(c.sample.methods), list(x.related_steps)
    b = {(m, S): fd(base, "baseline", m, m, S) for m in methods for S in steps}
    dose, control = [], []
    if seed in runs.dose_image_seeds(cfg):
        for skip, tau in runs.dose_image_settings(cfg):
            arm = runs.dose_label(cfg, skip, tau)
            model = generate.load_model(runs.image_run(paths, arm, seed), ev.device)[0]
            lam = epsscale.implied_s2dm(sch, skip, tau)
            scaled = epsscale.EpsScaled(base, lam)
            lam_max = float(lam(torch.arange(c.diffusion.T)).max()) - 1
            for m in methods:
                for S in steps:
                    dose.append({"model": "image", "metric": ev.name, "skip": skip, "tau": tau, "lambda_max": lam_max,
                                 "sampler": m, "steps": S, "seed": seed, "baseline": b[m, S],
                                 "s2dm": fd(model, arm, m, m, S), "implied": fd(scaled, "baseline", f"{m}+{lam.label}", m, S)})
    if seed < min(x.control_seeds, x.n_seeds):
        for v in x.control_lambdas:
            lam = epsscale.Constant(v)
            for S in steps:
                ref = b["ddim", S] if ("ddim", S) in b else fd(base, "baseline", "ddim", "ddim", S)
                control.append({"lambda": v, "sampler": "ddim", "steps": S, "seed": seed, "baseline": ref,
                                "scaled": fd(epsscale.EpsScaled(base, lam), "baseline", f"ddim+{lam.label}", "ddim", S)})
    return {"dose": dose, "control": control}


def toy_seed_rows(cfg: Config, paths: Paths, seed: int) -> list[dict]:
    """Toy seed ``seed`` at every dose setting: exact toy metrics (lib.measure.toymetrics: MMD² against the
    known mixture on one reference set per seed, mean −log p under the true density) of the baseline, S²-DM at (skip, τ) and the baseline ÷ implied λ_t, every
    sampler of sample.methods at experiment.related_steps, from the seed's own x_T."""
    tcfg = sample_config(toy_config(_plan_cfg(cfg)), seed)
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
    for skip, tau in runs.dose_settings(cfg):
        model = generate.load_model(runs.toy_run(paths, runs.dose_label(cfg, skip, tau), seed))[0]
        lam = epsscale.implied_s2dm(sch, skip, tau)
        scaled = epsscale.EpsScaled(base, lam)
        lam_max = float(lam(torch.arange(tcfg.diffusion.T)).max()) - 1
        for m in methods:
            for S in steps:
                s2, im = metrics(model, m, S), metrics(scaled, m, S)
                for k in TOY_METRICS:
                    rows.append({"model": "toy", "metric": k, "skip": skip, "tau": tau, "lambda_max": lam_max,
                                 "sampler": m, "steps": S, "seed": seed, "baseline": b[m, S][k], "s2dm": s2[k],
                                 "implied": im[k]})
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
