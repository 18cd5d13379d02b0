"""Is there a laptop regime where ε scaling helps images? (issue 27, part 6)

    OMP_NUM_THREADS=1 python bench/eps_regime.py [--profile cpu] [--seeds 4] [--lengths 2000,4000,8000]
        [--lambdas 0.98,0.99,0.995,1.005,1.01,1.02] [--steps 10,20] [--root DIR] [--out DIR] [--set KEY=VALUE ...]

Trains the profile's baseline longer: one run per training seed s (``train.seed = s``) to the longest length,
with a checkpoint at every length (``train.ckpt_every`` = the lengths' greatest common divisor, all of them
kept), under ``data/runs/<profile>/eps-regime/`` of the output root. Then it measures the EMA weights of
every length with DDIM at each step count, as they are (λ = 1) and with their ε divided by each constant λ
of the grid (Epsilon Scaling, Ning et al.: lib.related.epsscale), ``sample.n_samples`` samples per cell from
training seed s's own x_T (lib.experiment.evaluate.image_cell), KID as the headline and FD_clf beside it.

Per (length, steps, λ): the per-seed paired difference KID(λ) − KID(1), in % of KID(1) and absolute, its
mean with the 95 % t-interval over seeds, the two-sided paired-t p with Holm's correction over the λ grid
of that (length, steps) (the family), and the MDE at 80 % power from the cell's own seed SD. The best λ per
(length, steps) is the one with the lowest mean KID (λ = 1 included). A checkpoint's EMA stands for a run of
that length because the learning rate and the EMA ramp do not read ``train.steps``: the bench checks that
in code and, unless ``--no-check``, by training seed 0 once to the shortest length alone and comparing.

Resumable: training resumes from its checkpoints (lib.train), and every finished cell is cached in
``eps-regime/cells.json`` (written atomically, keyed by seed, length, steps and λ, reused only for the same
checkpoint file and sample/metric settings), so a killed run is rerun with the same command. Writes
``eps_regime_<profile>.json`` (every per-seed value) and ``.md`` to ``--out`` (default bench/results/).
Run it alone: one single-threaded process (torch.set_num_threads(1)).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from functools import reduce
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/machine.py)
from lib import recipe  # noqa: E402
from lib.experiment import runs  # noqa: E402
from lib.experiment.evaluate import ImageEvaluator, image_cell, sample_seed  # noqa: E402
from lib.factory import build_model  # noqa: E402
from lib.infra import checkpoint as ckpt  # noqa: E402
from lib.infra import rundir, runlog  # noqa: E402
from lib.infra.config import get_config, with_overrides  # noqa: E402
from lib.infra.paths import Paths  # noqa: E402
from lib.measure.stats import holm, mde_paired_t, paired_t, seed_interval  # noqa: E402
from lib.related import epsscale  # noqa: E402
from lib.train import train  # noqa: E402

ALPHA, POWER, LEVEL = 0.05, 0.8, 0.95


# ---------------------------------------------------------------------------- the study's runs and cells
def cell_key(seed: int, length: int, steps: int, lam: float) -> str:
    return f"seed={seed}|length={length}|steps={steps}|lambda={lam:g}"


def train_config(cfg, seed: int, lengths) -> tuple:
    """The config of seed ``seed``'s one run: to max(lengths), a kept checkpoint at every length."""
    every = reduce(math.gcd, lengths)
    top = max(lengths)
    return with_overrides(runs.seed_config(cfg, seed), {"train.steps": top, "train.ckpt_every": every,
                                                        "train.keep_ckpts": top // every}), every


def ema_at(run: Path, length: int, seed: int, cfg, device):
    """The EMA ε-model of ``run``'s checkpoint at step ``length`` (eval mode) and the checkpoint's sha256."""
    path = ckpt.ckpt_path(run, length)
    state = ckpt.safe_load(path, map_location="cpu")
    if int(state["step"]) != length or state.get("arm") != "baseline" or state["config"]["train"]["seed"] != seed:
        raise RuntimeError(f"{path} is not step {length} of the baseline of seed {seed}")
    model = build_model(cfg.model)
    model.load_state_dict(state["ema"])
    return model.to(device).eval(), ckpt.sha256(path), state


def max_abs_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a)


def seconds_per_step(run: Path, batch: int) -> float:
    """The median training time per step from the run's loss.csv (images/s of each logged stretch)."""
    ips = runlog.read_log(run)["images_per_s"] if runlog.log_path(run).exists() else []
    return float(batch / np.median(ips)) if ips else float("nan")


class Cache:
    """cells.json of the study: finished cells, the invocations' wall times; every write atomic."""

    def __init__(self, path: Path, argv: list):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}
        self.data.setdefault("cells", {})
        self.data.setdefault("invocations", [])
        self.data.setdefault("checks", {})
        self.t0 = time.time()
        self.data["invocations"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": argv, "seconds": 0})
        self.save()

    def get(self, key: str, sha: str, design: str):
        c = self.data["cells"].get(key)
        return c if c and c.get("ckpt_sha256") == sha and c.get("design") == design else None

    def put(self, key: str, value: dict):
        self.data["cells"][key] = value
        self.save()

    def save(self):
        self.data["invocations"][-1]["seconds"] = round(time.time() - self.t0, 1)
        ckpt.atomic_write_text(self.path, json.dumps(self.data, indent=1))

    @property
    def total_seconds(self) -> float:
        return float(sum(i["seconds"] for i in self.data["invocations"]))


def design_id(cfg) -> str:
    """What a cell's number depends on besides the weights: everything but train/experiment/toy settings."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("train", "experiment", "toy", "profile")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- the equivalence check
def lr_schedule_reads_steps(cfg, lengths) -> bool:
    """Whether lib.recipe.learning_rate gives another rate at any step < min(lengths) when only train.steps differs."""
    short, long_ = (with_overrides(cfg, {"train.steps": n}).train for n in (min(lengths), max(lengths)))
    return any(recipe.learning_rate(short, i) != recipe.learning_rate(long_, i) for i in range(min(lengths)))


def equivalence_check(cfg, study: Path, long_run: Path, lengths, seed: int = 0) -> dict:
    """Train seed ``seed`` alone to min(lengths) and compare its final state with the long run's checkpoint there."""
    L = min(lengths)
    c = with_overrides(runs.seed_config(cfg, seed), {"train.steps": L, "train.ckpt_every": L, "train.keep_ckpts": 1})
    short = study / f"check-baseline-seed{seed}-L{L}"
    t0 = time.time()
    train(c, "baseline", short, progress=False)
    a = ckpt.safe_load(ckpt.ckpt_path(short, L))
    b = ckpt.safe_load(ckpt.ckpt_path(long_run, L))
    _, final = rundir.load_run(short, map_location="cpu")
    return {"seed": seed, "length": L, "short_run": str(short), "seconds": round(time.time() - t0, 1),
            "ema_max_abs_diff": max_abs_diff(a["ema"], b["ema"]),
            "model_max_abs_diff": max_abs_diff(a["model"], b["model"]),
            "final_vs_ckpt_ema_max_abs_diff": max_abs_diff(final, a["ema"]),
            "bitwise_equal": max_abs_diff(a["ema"], b["ema"]) == 0.0 and max_abs_diff(a["model"], b["model"]) == 0.0}


# ---------------------------------------------------------------------------- the analysis (pure)
def _ci(values) -> dict:
    ci = seed_interval(values, LEVEL)
    return {"mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]}


def _mde(sd: float, n: int, alpha: float) -> float:
    return mde_paired_t(sd, n, POWER, alpha) if n > 1 and np.isfinite(sd) and sd > 0 else float("nan")


def analyse(cells: dict, seeds, lengths, steps, lambdas) -> dict:
    """Every table of the md from the per-seed cells ({cell_key: {"KID": .., "FD_clf": ..}})."""
    seeds, m = list(seeds), len(lambdas)

    def per_seed(L, S, lam, metric):
        return np.array([cells[cell_key(s, L, S, lam)][metric] for s in seeds], dtype=np.float64)

    baseline = []
    for L in lengths:
        for S in steps:
            k, f = per_seed(L, S, 1.0, "KID"), per_seed(L, S, 1.0, "FD_clf")
            baseline.append({"length": L, "steps": S, "kid": k.tolist(), "fd": f.tolist(), "kid_ci": _ci(k), "fd_ci": _ci(f)})
    trend = []
    for L0, L1 in zip(lengths, lengths[1:]):
        for S in steps:
            row = {"from": L0, "to": L1, "steps": S}
            for name, metric in (("kid", "KID"), ("fd", "FD_clf")):
                a, b = per_seed(L0, S, 1.0, metric), per_seed(L1, S, 1.0, metric)
                t = paired_t(100 * (b - a) / a, LEVEL)
                row[name] = {"pct": (100 * (b - a) / a).tolist(), "mean": t["mean"], "lo": t["lo"], "hi": t["hi"], "p": t["p"]}
            trend.append(row)
    rows, best = [], []
    for L in lengths:
        for S in steps:
            k1, f1 = per_seed(L, S, 1.0, "KID"), per_seed(L, S, 1.0, "FD_clf")
            fam = []
            for lam in lambdas:
                kl, fl = per_seed(L, S, lam, "KID"), per_seed(L, S, lam, "FD_clf")
                d_abs, d_pct, f_pct = kl - k1, 100 * (kl - k1) / k1, 100 * (fl - f1) / f1
                t, ta, tf = paired_t(d_pct, LEVEL), paired_t(d_abs, LEVEL), paired_t(f_pct, LEVEL)
                fam.append({"length": L, "steps": S, "lambda": lam, "kid": kl.tolist(), "fd": fl.tolist(),
                            "kid_mean": float(kl.mean()), "kid_base_mean": float(k1.mean()),
                            "d_pct": d_pct.tolist(), "d_abs": d_abs.tolist(),
                            "pct": {k: t[k] for k in ("mean", "lo", "hi", "sd", "p")},
                            "abs": {k: ta[k] for k in ("mean", "lo", "hi", "sd", "p")},
                            "fd_pct": {k: tf[k] for k in ("mean", "lo", "hi", "p")},
                            "mde_pct": _mde(t["sd"], t["n"], ALPHA), "mde_pct_holm_first": _mde(t["sd"], t["n"], ALPHA / m),
                            "mde_abs": _mde(ta["sd"], ta["n"], ALPHA), "n": t["n"]})
            for r, ph in zip(fam, holm([r["pct"]["p"] for r in fam])):
                r["p_holm"] = ph
                r["helps"] = bool(ph < ALPHA and r["pct"]["mean"] < 0)
                r["hurts"] = bool(ph < ALPHA and r["pct"]["mean"] > 0)
            rows += fam
            lo = min(fam, key=lambda r: r["kid_mean"])
            b = {"length": L, "steps": S, "kid_base_mean": float(k1.mean())}
            if lo["kid_mean"] < k1.mean():
                b.update(lam=lo["lambda"], kid_mean=lo["kid_mean"], pct=lo["pct"], abs=lo["abs"], p_holm=lo["p_holm"],
                         helps=lo["helps"], mde_pct=lo["mde_pct"], mde_pct_holm_first=lo["mde_pct_holm_first"])
            else:
                b.update(lam=1.0, kid_mean=float(k1.mean()), helps=False)
            best.append(b)
    return {"baseline": baseline, "trend": trend, "rows": rows, "best": best, "answer": answer(rows, best, trend, lengths, steps)}


def answer(rows, best, trend, lengths, steps) -> dict:
    """Does any λ ≠ 1 help significantly; the MDEs; does the trend ask for a longer length."""
    helps = [(r["length"], r["steps"], r["lambda"]) for r in rows if r["helps"]]
    hurts = [(r["length"], r["steps"], r["lambda"]) for r in rows if r["hurts"]]
    mdes = [r["mde_pct"] for r in rows if np.isfinite(r["mde_pct"])]
    mdes_h = [r["mde_pct_holm_first"] for r in rows if np.isfinite(r["mde_pct_holm_first"])]
    top, prev = lengths[-1], (lengths[-2] if len(lengths) > 1 else None)
    falling = [t for t in trend if t["from"] == prev and t["to"] == top and t["kid"]["hi"] < 0]
    # the gain of the best λ (its mean % KID difference, 0 where λ = 1 is best) per length, per step count
    gain = {S: [next(b["pct"]["mean"] if b["lam"] != 1.0 else 0.0 for b in best if b["length"] == L and b["steps"] == S)
                for L in lengths] for S in steps}
    growing = [S for S, g in gain.items() if len(g) > 1 and g[-1] < 0 and all(g[-1] < x for x in g[:-1])]
    return {"any_helps": bool(helps), "helps": helps, "hurts": hurts,
            "mde_pct_range": [min(mdes), max(mdes)] if mdes else None,
            "mde_pct_holm_first_range": [min(mdes_h), max(mdes_h)] if mdes_h else None,
            "kid_still_falling_at": [t["steps"] for t in falling], "best_gain_pct": {str(S): g for S, g in gain.items()},
            "gain_grows_at": growing, "asks_longer": bool(falling or growing)}


# ---------------------------------------------------------------------------- the report
def _g(x, d=3) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{d}g}"


def _iv(c, d=3, pct=False) -> str:
    u = " %" if pct else ""
    return f"{_g(c['mean'], d)}{u} [{_g(c['lo'], d)}, {_g(c['hi'], d)}]"


def _pv(p) -> str:
    return "nan" if not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def report(res: dict) -> str:
    a, d, an = res["args"], res["design"], res["analysis"]
    ans = an["answer"]
    L, S = a["lengths"], a["steps"]
    m = len(a["lambdas"])
    cmd = "OMP_NUM_THREADS=1 python bench/eps_regime.py " + " ".join(res["argv"])
    eq = res["equivalence"]
    md = [f"# Is there a laptop regime where ε scaling helps images? ({a['profile']})", "",
          f"`{cmd.strip()}` on {res['date']}; {res['machine']}. Wall time {res['wall_s'] / 60:.1f} min over "
          f"{res['invocations']} invocation(s) (this one {res['wall_this_s'] / 60:.1f} min); load average (1 min) "
          f"{res['load'][0]:.2f} at its start, {res['load'][1]:.2f} at its end (another engineer shares the 2 cores).", ""]
    if d["overrides"]:
        md += [f"**Overrides** on the profile: {', '.join(d['overrides'])} — not the profile's design.", ""]
    md += ["## Design", "",
           f"* Training: the `{a['profile']}` baseline (MNIST {d['resolution']}×{d['resolution']}, {d['params']:,}-parameter UNet, "
           f"batch {d['batch']}, lr {d['lr']:g} after a {d['warmup']}-step warm-up, EMA decay {d['ema_decay']:g} with "
           f"ramp-up {d['ema_rampup']:g}), {a['seeds']} training seeds (train.seed = 0…{a['seeds'] - 1}), one run per seed to "
           f"{max(L):,} steps with a checkpoint every {d['ckpt_every']:,} steps, all kept; the EMA weights of the checkpoint "
           f"at each length {', '.join(f'{x:,}' for x in L)} are measured.",
           f"* Sampling: DDIM at {', '.join(map(str, S))} steps, {d['n_samples']} samples per cell, training seed s's own "
           f"x_T (sample seed {d['sample_seed']} + 1000·s) shared by every length and λ of that seed (paired); ε divided by "
           f"a constant λ ∈ {{{', '.join(f'{x:g}' for x in a['lambdas'])}}} (lib.related.epsscale.Constant, EpsScaled) "
           "beside λ = 1 (the plain model).",
           f"* Metric: KID (unbiased MMD², cubic kernel) on the features of the small MNIST classifier "
           f"({d['metric']}), the headline; FD_clf on the same features beside it. A cell's sample-bootstrap "
           f"intervals ({d['n_boot']} replicates) are in the JSON; the intervals below are over training seeds.",
           f"* Decision: per (length, steps, λ) the per-seed difference KID(λ) − KID(1) in % of that seed's KID(1); "
           f"mean and 95 % Student-t interval over the {a['seeds']} seeds, two-sided paired-t p. **Family**: the {m} λ ≠ 1 "
           f"of one (length, steps) — Holm's correction within it ({len(L) * len(S)} families). A λ *helps significantly* "
           f"where its Holm p < {ALPHA} and its mean difference is < 0 (its 95 % interval then lies below 0). MDE: the "
           f"smallest |difference| the paired t-test over {a['seeds']} seeds detects with {POWER:.0%} power at α = {ALPHA} "
           f"from the cell's own seed SD (noncentral t, lib.measure.stats.mde_paired_t), and at α = {ALPHA}/{m} (what "
           f"Holm's first step needs).", ""]
    md += [f"## Does the EMA at step {min(L):,} of the long run stand for a {min(L):,}-step run?", "",
           f"* lib.recipe.learning_rate(t, step) reads train.lr, train.warmup and the step index: at every step < "
           f"{min(L):,} it gives the same rate under train.steps = {min(L):,} and {max(L):,}: "
           f"**{'no' if res['lr_reads_steps'] else 'yes'}**, identical (constant lr after the warm-up).",
           "* lib.recipe.EMA.beta(n) reads train.ema_decay, train.ema_rampup and the update index n only (the ramp "
           "caps the half-life at ema_rampup·n, not at a fraction of train.steps); train.steps is one of lib.infra.rundir's "
           f"RESUMABLE_KEYS (it does not change a run's trajectory): **{'yes' if res['steps_resumable'] else 'no'}**."]
    if eq:
        md += [f"* Checked by training: seed {eq['seed']} trained alone to {eq['length']:,} steps ({eq['seconds']:.0f} s) "
               f"against the checkpoint at {eq['length']:,} of its {max(L):,}-step run: largest |difference| of the EMA "
               f"weights {eq['ema_max_abs_diff']:.3g}, of the raw weights {eq['model_max_abs_diff']:.3g} — "
               f"**{'bitwise identical' if eq['bitwise_equal'] else 'NOT identical'}**."]
    else:
        md += ["* Not checked by training (--no-check)."]
    md += [f"* Each run's final.pt equals the EMA of its last checkpoint: "
           f"**{'yes' if all(v == 0.0 for v in res['final_vs_last_ckpt'].values()) else 'no'}** "
           f"(largest |difference| {max(res['final_vs_last_ckpt'].values()):.3g}).", ""]
    md += ["## The baseline per length", "",
           "Mean over seeds [95 % t-interval]; per seed in seed order.", "",
           "| length | DDIM steps | KID | KID per seed | FD_clf | FD_clf per seed |", "|---|---|---|---|---|---|"]
    for b in an["baseline"]:
        md.append(f"| {b['length']:,} | {b['steps']} | {_iv(b['kid_ci'])} | {' / '.join(_g(x) for x in b['kid'])} | "
                  f"{_iv(b['fd_ci'])} | {' / '.join(_g(x) for x in b['fd'])} |")
    if an["trend"]:
        md += ["", "Change from one length to the next (paired per seed, % of the shorter length's value):", "",
               "| from → to | DDIM steps | KID change | p | FD_clf change | p |", "|---|---|---|---|---|---|"]
        for t in an["trend"]:
            md.append(f"| {t['from']:,} → {t['to']:,} | {t['steps']} | {_iv(t['kid'], pct=True)} | {_pv(t['kid']['p'])} | "
                      f"{_iv(t['fd'], pct=True)} | {_pv(t['fd']['p'])} |")
    md += ["", "## KID(λ) − KID(1) per length, steps and λ", "",
           f"Δ% : mean [95 % t-interval] of the per-seed % difference (< 0: λ lowers KID); Δ abs: the same in KID units; "
           f"Holm p within the (length, steps) family of {m}; MDE % at α = {ALPHA} / at α = {ALPHA}/{m}; ΔFD_clf % beside.", "",
           "| length | steps | λ | KID(λ) | Δ% KID | Δ abs KID | p | Holm p | MDE % | MDE % (α/m) | Δ% FD_clf | verdict |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in an["rows"]:
        v = "**helps**" if r["helps"] else ("hurts" if r["hurts"] else "n.s.")
        md.append(f"| {r['length']:,} | {r['steps']} | {r['lambda']:g} | {_g(r['kid_mean'])} | {_iv(r['pct'], pct=True)} | "
                  f"{_iv(r['abs'])} | {_pv(r['pct']['p'])} | {_pv(r['p_holm'])} | {_g(r['mde_pct'])} | "
                  f"{_g(r['mde_pct_holm_first'])} | {_iv(r['fd_pct'], pct=True)} | {v} |")
    md += ["", "## The best λ per length and steps", "",
           "The λ with the lowest mean KID over seeds (λ = 1 included).", "",
           "| length | steps | best λ | KID(best) | KID(1) | Δ% KID [95 % CI] | Holm p | helps significantly |",
           "|---|---|---|---|---|---|---|---|"]
    for b in an["best"]:
        if b["lam"] == 1.0:
            md.append(f"| {b['length']:,} | {b['steps']} | 1 (no λ ≠ 1 lowers the mean) | {_g(b['kid_mean'])} | "
                      f"{_g(b['kid_base_mean'])} | — | — | no |")
        else:
            md.append(f"| {b['length']:,} | {b['steps']} | {b['lam']:g} | {_g(b['kid_mean'])} | {_g(b['kid_base_mean'])} | "
                      f"{_iv(b['pct'], pct=True)} | {_pv(b['p_holm'])} | {'**yes**' if b['helps'] else 'no'} |")
    md += ["", "## The answer", ""]
    lo, hi = ans["mde_pct_range"] or (float("nan"),) * 2
    loh, hih = ans["mde_pct_holm_first_range"] or (float("nan"),) * 2
    if ans["any_helps"]:
        md.append("**Yes.** A λ ≠ 1 lowers KID significantly (Holm p < 0.05 within its family, interval below 0) at: "
                  + "; ".join(f"length {x:,}, DDIM {s}, λ = {lam:g}" for x, s, lam in ans["helps"]) + ".")
    else:
        md.append(f"**No.** At no length ({', '.join(f'{x:,}' for x in L)} steps) and no DDIM step count "
                  f"({', '.join(map(str, S))}) does a constant λ ≠ 1 of the grid lower KID significantly (Holm p < 0.05 "
                  f"within each (length, steps) family). With {a['seeds']} seeds the MDE at 80 % power is "
                  f"{_g(lo)}–{_g(hi)} % of KID(1) per cell at α = 0.05 ({_g(loh)}–{_g(hih)} % at Holm's first step, "
                  f"α = 0.05/{m}): a gain smaller than that is not excluded.")
    if ans["hurts"]:
        md.append("")
        md.append("Significantly worse (Holm p < 0.05, mean > 0): " + "; ".join(
            f"length {x:,}, DDIM {s}, λ = {lam:g}" for x, s, lam in ans["hurts"]) + ".")
    md += ["", f"## Does the trend ask for {2 * max(L):,} steps?", ""]
    g = ans["best_gain_pct"]
    md.append("Mean % KID difference of the best λ per length (0 where λ = 1 is best): " + "; ".join(
        f"DDIM {s}: " + ", ".join(f"{_g(x)} %" for x in v) for s, v in g.items()) + f" (lengths {', '.join(f'{x:,}' for x in L)}).")
    if len(L) > 1:
        fall, grow = ans["kid_still_falling_at"], ans["gain_grows_at"]
        md.append(f"The baseline's KID still falls significantly from {L[-2]:,} to {L[-1]:,} steps (paired interval below 0) "
                  + (f"at DDIM {', '.join(map(str, fall))}" if fall else "at no DDIM step count")
                  + "; the best λ's gain is largest at the longest length (and < 0) "
                  + (f"at DDIM {', '.join(map(str, grow))}." if grow else "at no DDIM step count."))
    sps = res["seconds_per_step"]
    est = a["seeds"] * 2 * max(L) * sps / 3600 if np.isfinite(sps) else float("nan")
    md.append(f"So the trend **{'asks' if ans['asks_longer'] else 'does not ask'}** for a longer length (criteria: either of the "
              f"two above). {2 * max(L):,} steps were **not run**: the session had no time for it — {a['seeds']} seeds × "
              f"{2 * max(L):,} steps take about {_g(est, 2)} h "
              f"of training alone at the measured {sps:.3f} s per step on one thread (median over the runs' logs), "
              f"before sampling.")
    md += ["", f"Every per-seed value (KID, FD_clf and their sample-bootstrap intervals per cell) is in "
           f"eps_regime_{a['profile']}.json beside this file; the tables re-derive from it (bench/eps_regime.py's analyse)."]
    return "\n".join(md) + "\n"


# ---------------------------------------------------------------------------- main
def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--lengths", type=_ints, default=[2000, 4000, 8000], help="training lengths, comma-separated")
    p.add_argument("--lambdas", type=_floats, default=[0.98, 0.99, 0.995, 1.005, 1.01, 1.02])
    p.add_argument("--steps", type=_ints, default=[10, 20], help="DDIM step counts")
    p.add_argument("--root", default=None, help="output root instead of the repository (runs, classifier, samples)")
    p.add_argument("--out", default=None, help="where the json and md go (default bench/results)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override on the profile (labelled in the md), e.g. sample.n_samples=64")
    p.add_argument("--no-check", action="store_true", help="skip the training check of the EMA-at-a-checkpoint equivalence")
    a = p.parse_args(argv)
    lengths, lambdas = sorted(set(a.lengths)), [x for x in a.lambdas if x != 1.0]
    if a.seeds < 2 or not lengths or not lambdas or not a.steps:
        p.error("need >= 2 seeds, a length, a λ != 1 and a step count")
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    cfg = with_overrides(get_config(a.profile), a.overrides)
    P = Paths(a.profile, Path(a.root) if a.root else None)
    study = P.run("eps-regime")
    study.mkdir(parents=True, exist_ok=True)
    cache = Cache(study / "cells.json", argv)
    design = design_id(cfg)
    ev = None
    finals, sps, check = {}, [], None
    for s in range(a.seeds):
        tc, every = train_config(cfg, s, lengths)
        run = study / f"baseline-seed{s}"
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] seed {s}: training {run} to {max(lengths)} steps (resumes)", flush=True)
        train(tc, "baseline", run, progress=False)
        print(f"[{time.strftime('%H:%M:%S')}] seed {s}: trained ({time.time() - t0:.0f} s this call)", flush=True)
        cache.save()  # the invocation's wall time so far
        sps.append(seconds_per_step(run, tc.train.batch_size))
        _, final = rundir.load_run(run, map_location="cpu")
        finals[s] = max_abs_diff(final, ckpt.safe_load(ckpt.ckpt_path(run, max(lengths)))["ema"])
        if s == 0 and not a.no_check:
            key = f"seed=0|length={min(lengths)}|sha={ckpt.sha256(ckpt.ckpt_path(run, min(lengths)))}"
            check = cache.data["checks"].get(key) or equivalence_check(cfg, study, run, lengths)
            cache.data["checks"][key] = check
            cache.save()
            print(f"equivalence check: {check}", flush=True)
        if ev is None:
            ev = ImageEvaluator(cfg, P, progress=False)
        for L in lengths:
            model, sha, _ = ema_at(run, L, s, cfg, ev.device)
            for S in a.steps:
                for lam in [1.0, *lambdas]:
                    key = cell_key(s, L, S, lam)
                    if cache.get(key, sha, design):
                        continue
                    t1 = time.time()
                    net = model if lam == 1.0 else epsscale.EpsScaled(model, epsscale.Constant(lam))
                    label = "ddim" if lam == 1.0 else f"ddim+es({lam:g})"
                    r = image_cell(ev, net, cfg, f"eps-regime-L{L}", "ddim", S, seed=s, label=label, progress=False)
                    cache.put(key, {"seed": s, "length": L, "steps": S, "lambda": lam, "KID": r["KID"], "KID_lo": r["KID_lo"],
                                    "KID_hi": r["KID_hi"], "FD_clf": r[ev.name], "FD_lo": r["lo"], "FD_hi": r["hi"],
                                    "nfe": r["nfe"], "n": r["n"], "sample_seed": r["sample_seed"], "ckpt_sha256": sha,
                                    "design": design, "seconds": round(time.time() - t1, 1)})
                    print(f"[{time.strftime('%H:%M:%S')}] {key}: KID {r['KID']:.4g} FD_clf {r[ev.name]:.4g} "
                          f"({time.time() - t1:.0f} s)", flush=True)
    cells = {k: v for k, v in cache.data["cells"].items()
             if v.get("design") == design and v["seed"] < a.seeds and v["length"] in lengths and v["steps"] in a.steps
             and (v["lambda"] == 1.0 or v["lambda"] in lambdas)}
    an = analyse(cells, range(a.seeds), lengths, a.steps, lambdas)
    cache.save()
    t = cfg.train
    res = {"argv": argv, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
           "machine": f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} thread",
           "wall_s": cache.total_seconds, "wall_this_s": cache.data["invocations"][-1]["seconds"],
           "invocations": len(cache.data["invocations"]), "load": [load0, os.getloadavg()[0]],
           "args": {"profile": a.profile, "seeds": a.seeds, "lengths": lengths, "lambdas": lambdas, "steps": a.steps},
           "design": {"overrides": a.overrides, "resolution": cfg.model.resolution, "batch": t.batch_size, "lr": t.lr,
                      "warmup": t.warmup, "ema_decay": t.ema_decay, "ema_rampup": t.ema_rampup,
                      "ckpt_every": train_config(cfg, 0, lengths)[1], "n_samples": cfg.sample.n_samples,
                      "sample_seed": sample_seed(cfg, 0), "n_boot": cfg.eval.n_boot, "metric": f"width {cfg.eval.classifier_width}, {cfg.eval.classifier_steps} training steps",
                      "params": sum(x.numel() for x in build_model(cfg.model).parameters()), "design_id": design},
           "lr_reads_steps": lr_schedule_reads_steps(cfg, lengths), "steps_resumable": "train.steps" in rundir.RESUMABLE_KEYS,
           "equivalence": check, "final_vs_last_ckpt": {str(k): v for k, v in finals.items()},
           "seconds_per_step": float(np.nanmedian(sps)), "seconds_per_step_per_seed": sps,
           "study": str(study), "cells": cells, "analysis": an}
    out = Path(a.out) if a.out else ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"eps_regime_{a.profile}.json").write_text(json.dumps(res, indent=1))
    md = report(res)
    (out / f"eps_regime_{a.profile}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
