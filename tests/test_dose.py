"""The dose–response test of the shrinkage explanation (lib.experiment.dose) and its training runs."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sst

from lib.experiment import dose, runs, shrinkers
from lib.factory import schedule_of
from lib.infra.config import ConfigError, from_dict, get_config
from lib.infra.paths import Paths


@pytest.mark.parametrize("skip,tau", [(9, 0.99), (9, 0.9), (99, 0.99), (3, 0.5)])
def test_implied_lambda_is_the_closed_form_in_float64(skip, tau):
    """λ_t = (τ + (1−τ)c_t²)/τ, c_t² = ᾱ_{t−skip}/ᾱ_t − 1, from the betas by hand (λ = 1 for t < skip)."""
    sch = schedule_of(get_config("cpu"))
    abar = np.cumprod(1.0 - sch.betas.numpy().astype(np.float64))
    t = np.arange(sch.T)
    c2 = abar[np.maximum(t - skip, 0)] / abar - 1.0
    want = np.where(t < skip, 1.0, (tau + (1.0 - tau) * c2) / tau)
    got = dose.implied_lambda(sch, skip, tau, torch.arange(sch.T))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=0)


def test_the_strong_settings_scale_lambda_by_ten_or_more():
    rows = dose.strengths(get_config("cpu"))
    by = {(r["skip"], r["tau"]): r for r in rows if r["arm"] == "s2dm"}
    assert by[9, 0.99]["× profile's"] == pytest.approx(1.0)
    assert by[9, 0.9]["× profile's"] >= 10 and by[99, 0.99]["× profile's"] >= 10
    assert by[9, 0.99]["lambda_max − 1"] == pytest.approx(0.0020, abs=1e-4)


def _flat(cfg) -> dict:
    return {f"{s}.{k}": v for s, sec in cfg.to_dict().items() if isinstance(sec, dict) for k, v in sec.items()}


@pytest.mark.parametrize("profile", ["ci", "cpu"])
def test_dose_jobs_are_paired_with_the_baseline(profile, tmp_path):
    """Seed s of a dose run has the baseline's train.seed = s and differs from the s2dm arm of seed s only
    in loss.skip/loss.tau; the profile's own strength is the s2dm arm (not trained twice)."""
    cfg = get_config(profile)
    P = Paths(profile, tmp_path)
    jobs = runs.dose_jobs(cfg, P)
    assert jobs, "no dose runs"
    image = runs.image_jobs(cfg, P)
    toy = runs.toy_jobs(cfg, P)
    kinds = set()
    for (kind, arm, s), job in jobs.items():
        kinds.add(kind)
        if job.arm == "ip":  # DDPM-IP: the baseline's config of seed s with loss.gamma, under arm ip
            ref = (image if kind == "images" else toy)["baseline", s]
            a, b = _flat(job.cfg), _flat(ref.cfg)
            assert {k for k in a if a[k] != b[k]} <= {"loss.gamma"} and arm == shrinkers.ip_arm(job.cfg.loss.gamma)
            assert job.out == (runs.image_run(P, arm, s) if kind == "images" else runs.toy_run(P, arm, s))
            continue
        ref = (image if kind == "images" else toy)["s2dm", s]
        assert job.arm == "s2dm" and job.cfg.train.seed == s == ref.cfg.train.seed
        a, b = _flat(job.cfg), _flat(ref.cfg)
        differ = {k for k in a if a[k] != b[k]}
        assert differ and differ <= {"loss.skip", "loss.tau"} and a.keys() == b.keys(), (arm, differ)
        assert arm == runs.dose_arm(job.cfg.loss.skip, job.cfg.loss.tau) != "s2dm"
        assert (job.cfg.loss.skip, job.cfg.loss.tau) != (cfg.loss.skip, cfg.loss.tau)
        assert job.out == (runs.image_run(P, arm, s) if kind == "images" else runs.toy_run(P, arm, s))
        assert repr(from_dict(json.loads(json.dumps(job.cfg.to_dict())))) == repr(job.cfg)  # a worker gets it exactly
    assert kinds == {"images", "toy"}
    n_toy = sum(1 for k, j in jobs.items() if k[0] == "toy" and j.arm == "s2dm")
    assert n_toy == cfg.toy.n_seeds * sum(1 for st in runs.dose_settings(cfg) if st != (cfg.loss.skip, cfg.loss.tau))
    ip_toy = {k[1] for k, j in jobs.items() if k[0] == "toy" and j.arm == "ip"}
    ip_img = {k[1] for k, j in jobs.items() if k[0] == "images" and j.arm == "ip"}
    assert ip_toy == {shrinkers.ip_arm(g) for g in shrinkers.ip_doses(cfg, "toy")} and len(ip_toy) == 2
    assert ip_img == {shrinkers.ip_arm(shrinkers.matched_gamma(cfg, "image"))}
    assert runs.image_run(P, "s2dm-k99-t0.99", 1) == P.run("images/s2dm-k99-t0.99-seed1")


def test_dose_config_is_checked():
    with pytest.raises(ConfigError, match="dose_skip and experiment.dose_tau are zipped"):
        get_config("cpu", ["experiment.dose_tau=(0.9,)"])
    with pytest.raises(ConfigError, match="dose_image_settings"):
        get_config("cpu", ["experiment.dose_image_settings=(5,)"])
    with pytest.raises(ConfigError, match="skip < T"):
        get_config("cpu", ["experiment.dose_skip=(9,9,1000)"])


def _t(values):
    v = np.asarray(values, float)
    h = sst.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean(), v.mean() - h, v.mean() + h


def test_dose_table_on_synthetic_seeds():
    base, s2, imp = [10.0, 12.0, 11.0], [13.0, 14.5, 14.0], [12.0, 15.0, 13.5]
    per = [{"model": "image", "metric": "FD_clf", "arm": "s2dm", "skip": 99, "tau": 0.99, "gamma": "", "sampler": "ddim",
            "steps": 10, "seed": s, "baseline": b, "trained": o, "implied": p} for s, (b, o, p) in enumerate(zip(base, s2, imp))]
    per += [{**per[0], "sampler": "pndm", "seed": 0}]
    rows = dose.dose_table(per)
    assert [(r["sampler"], r["n_seeds"]) for r in rows] == [("ddim", 3), ("pndm", 1)]
    r = rows[0]
    for name, vals in (("observed", np.subtract(s2, base)), ("predicted", np.subtract(imp, base)),
                       ("difference", np.subtract(s2, imp))):
        m, lo, hi = _t(vals)
        assert (r[name], r[f"{name}_lo"], r[f"{name}_hi"]) == pytest.approx((m, lo, hi), rel=1e-12)
    assert set(dose.DOSE_COLUMNS) <= set(r)
    assert r["difference_mde"] == pytest.approx(st_mde(np.subtract(s2, imp)))
    assert math.isnan(rows[1]["observed_lo"]) and rows[1]["observed"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="seed listed twice"):
        dose.dose_table(per + [per[0]])


def st_mde(values):
    from lib.measure import stats as st
    return st.mde_paired_t(np.std(values, ddof=1), len(values), 0.8, 0.05)


def test_control_table_says_when_a_lambda_helps_and_what_it_could_detect():
    per = [{"metric": "KID", "lambda": lam, "sampler": "ddim", "steps": 10, "seed": s, "baseline": 50.0 + s,
            "scaled": 50.0 + s + d + 0.1 * s} for lam, d in ((0.99, -2.0), (1.02, 5.0)) for s in range(3)]
    rows = dose.control_table(per)
    assert [r["helps"] for r in rows] == [True, False]
    assert rows[0]["diff"] == pytest.approx(-1.9) and rows[1]["n_seeds"] == 3
    assert rows[0]["mde"] == pytest.approx(st_mde([-2.0, -1.9, -1.8]))
    rel = [100 * (-2.0 + 0.1 * s) / (50.0 + s) for s in range(3)]
    assert (rows[0]["rel %"], rows[0]["rel lo %"]) == pytest.approx((_t(rel)[0], _t(rel)[1]))


def test_the_positive_control_is_the_fraction_of_the_predicted_gain_with_fiellers_interval():
    from lib.measure import stats as st
    pred, obs = [-1.0, -1.2, -0.9, -1.1, -1.05], [-0.5, -0.7, -0.4, -0.6, -0.5]
    per = [{"model": "toy", "metric": "nll", "arm": "ip", "skip": "", "tau": "", "gamma": 0.16, "sampler": "ddim",
            "steps": 10, "seed": s, "baseline": 2.0, "trained": 2.0 + o, "implied": 2.0 + p}
           for s, (o, p) in enumerate(zip(obs, pred))]
    per += [{**r, "sampler": "pndm", "implied": r["baseline"] + 0.3 + 0.1 * r["seed"]} for r in per[:5]]  # no predicted gain
    (row,) = dose.positive_control(per)
    f = st.fieller_ratio(obs, pred)
    assert row["sampler"] == "ddim" and row["fraction"] == pytest.approx(np.mean(obs) / np.mean(pred))
    assert (row["fraction_lo"], row["fraction_hi"]) == pytest.approx((f["lo"], f["hi"])) and set(dose.POSITIVE_COLUMNS) <= set(row)


def test_sample_config_gives_each_seed_its_own_noise():
    cfg = get_config("ci")
    assert dose.sample_config(cfg, 0).sample.seed == cfg.sample.seed
    assert len({dose.sample_config(cfg, s).sample.seed for s in range(4)}) == 4


def test_the_neighbour_cells_keep_three_seeds_at_cpu():
    """Notebook 06's neighbour cells stay at seeds 0–2 when experiment.n_seeds grows (the cpu budget);
    the dose–response image runs and the control use at most their own seed counts."""
    from lib.experiment.related_sweep import Plan

    cfg = get_config("cpu", ["experiment.n_seeds=6"])
    assert Plan.of(cfg).seeds == (0, 1, 2)
    assert list(runs.dose_image_seeds(cfg)) == [0, 1, 2]
    assert Plan.of(get_config("ci")).seeds == (0, 1)


def test_the_answer_counts_the_decided_cells():
    rows = [{"model": "toy", "metric": "mmd", "arm": "s2dm", "skip": 99, "tau": 0.99, "gamma": "", "lambda_max": 0.0575,
             "sampler": m, "steps": 10, "observed": o, "predicted": p, "difference": o - p, "excludes_0": ex, "n_seeds": 5,
             "difference_mde": 0.3}
            for m, o, p, ex in (("ddim", 1.0, 0.5, True), ("pndm", 0.2, 0.1, False))]
    (line,) = dose.answer(rows)
    assert "excludes 0 in 1 of 2 cells" in line and "ddim-10 (+0.5)" in line and "5 seeds" in line


def test_detectable_uses_the_noncentral_t_mde_of_the_observed_seed_sd():
    from lib.measure import stats as st
    per_seed = [{"model": "image", "metric": "FD", "arm": "s2dm", "skip": 99, "tau": 0.99, "gamma": "", "sampler": "ddim",
                 "steps": 10, "seed": s, "baseline": 10.0, "trained": 10.0 + d, "implied": 10.5}
                for s, d in enumerate((0.2, 1.4, 0.9))]
    per_seed += [{**per_seed[0], "model": "toy", "seed": 0}]
    rows = dose.dose_table(per_seed, 0.95)
    assert rows[0]["observed_sd"] == pytest.approx(np.std([0.2, 1.4, 0.9], ddof=1), rel=1e-12)
    lines = dose.detectable(rows, 0.95)
    mde = st.mde_paired_t(rows[0]["observed_sd"], 3, 0.8, 0.05)
    assert len(lines) == 1 and f"MDE(80%) {mde:.3g}" in lines[0] and "predicted +0.5 (below the MDE)" in lines[0]


def test_ips_implied_scaling_is_its_optimum_on_gaussian_data_by_monte_carlo():
    """docs/method.md §1b: for x_0 ~ N(μ, σ²I), the least-squares optimum of ε on x_t built from ε + γξ is the clean
    optimum divided by λ_t = 1 + γ²(1−ᾱ_t)/(ᾱ_t σ² + 1 − ᾱ_t) (both optima are linear in x_t: regression finds them)."""
    from lib.related import epsscale
    sch = schedule_of(get_config("cpu"))
    g = torch.Generator().manual_seed(0)
    n, sigma2, gamma, mu = 400_000, 0.3, 0.4, 0.7
    for t in (50, 300, 900):
        a = float(sch.alpha_bar(torch.tensor(float(t))))
        x0 = mu + math.sqrt(sigma2) * torch.randn(n, generator=g, dtype=torch.float64)
        eps, xi = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)

        def slope(noise):  # least squares ε ≈ c + k·x_t
            x = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
            xc = x - x.mean()
            return float((xc * (eps - eps.mean())).sum() / (xc * xc).sum())

        want = float(epsscale.implied_ip(sch, gamma, sigma2)(torch.tensor(float(t))))
        ratio = slope(eps) / slope(eps + gamma * xi)
        assert ratio == pytest.approx(want, rel=4e-3), (t, ratio, want)
        assert 1.0 <= want <= 1 + gamma ** 2


def test_the_matched_gamma_equals_s2dms_mean_implied_scaling_on_the_ddim_10_grid():
    cfg = get_config("cpu")
    i = cfg.experiment.dose_ip_match
    for model in ("image", "toy"):
        mc = shrinkers.model_config(cfg, model)
        grid = shrinkers.ddim_grid(mc, 10)
        g = shrinkers.matched_gamma(cfg, model)
        ip = float((shrinkers.ip_lambda(cfg, model, g)(grid) - 1).mean())
        s2 = float((dose.implied_lambda(schedule_of(mc), cfg.experiment.dose_skip[i], cfg.experiment.dose_tau[i], grid) - 1).mean())
        assert ip == pytest.approx(s2, rel=2e-3) and 0.1 < g < 0.2, (model, g)
    assert shrinkers.ip_doses(cfg, "toy")[1] == 0.1 and shrinkers.matched_gamma(get_config("cpu", ["experiment.dose_ip_match=-1"]), "toy") is None
    with pytest.raises(ConfigError, match="dose_ip_match"):
        get_config("cpu", ["experiment.dose_ip_match=3"])


def test_the_ip_arm_at_gamma_zero_trains_the_baselines_weights_bit_for_bit(tmp_path):
    from lib.infra.config import with_overrides
    from lib.train import train
    cfg = with_overrides(get_config("ci"), {"train.steps": 4, "train.ckpt_every": 2})
    a = train(cfg, "baseline", tmp_path / "base", progress=False)
    b = train(with_overrides(cfg, {"loss.gamma": 0.0}), "ip", tmp_path / "ip0", progress=False)
    c = train(cfg, "ip", tmp_path / "ip", progress=False)  # the default γ 0.1 does move them
    wa, wb, wc = (torch.load(p, weights_only=True) for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and not all(torch.equal(wa[k], wc[k]) for k in wa)
