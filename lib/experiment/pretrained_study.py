"""Notebook 08's experiment: pretrained weights, calibrated against the published tables, the neighbours
on them, and the two arms fine-tuned from them.

* :func:`plan_for` — what runs at each profile (lib.infra.profiles: weights, step counts, sample size,
  fine-tune length);
* :func:`calibration` — DDIM (quad and uniform grid) and Time-Shift's DDIM beside DDIM's and Time-Shift's
  Table 1 (one row per method and S);
* :func:`neighbours` — every neighbouring method (lib.related) at the smallest S, NFE checked against
  the formula;
* :func:`finetune` and :func:`finetune_comparisons` — the baseline (control) and S²-DM arms trained
  from the same weights by lib.train (``init_from``), then paired comparisons by lib.experiment.compare.

Every row is a dict; the notebook saves, plots and asserts on them.
"""
from __future__ import annotations

import dataclasses
import json

from lib import generate, samplers
from lib.experiment import compare, published
from lib.experiment.evaluate import image_cell
from lib.infra import config, rehearsal
from lib.infra.profiles import NOTEBOOK_08, NotebookPlan
from lib.infra.runlog import read_log
from lib.related import epsscale, skiptuning
from lib.recipe import PAPER_ARMS
from lib.train import train


def plan_for(profile: str, cfg=None) -> NotebookPlan:
    """Notebook 08's plan at ``profile`` (lib.infra.profiles.NOTEBOOK_08); in a rehearsal (``cfg`` naming a
    manifest, lib.infra.rehearsal) with the manifest's smaller sizes (steps, samples, fine-tune steps)."""
    if profile not in NOTEBOOK_08:
        raise ValueError(f"no notebook-08 plan for profile {profile!r}; valid: {', '.join(NOTEBOOK_08)}")
    plan = NOTEBOOK_08[profile]
    m = rehearsal.of(cfg) if cfg is not None else None
    if m is not None and m.notebook_08:
        sizes = {k: tuple(v) if k == "steps" else v for k, v in m.notebook_08.items()
                 if k in ("steps", "n_samples", "finetune_steps")}
        plan = dataclasses.replace(plan, **sizes)
    return plan


# (method, grid, options, label, the published FIDs by S) of the calibration
def _calibration_cells():
    return [("ddim", "quad", {}, "ddim", published.DDIM_TABLE1["cifar10"]["fid"]),
            ("ddim", "uniform", {}, "ddim@uniform", published.TIME_SHIFT_TABLE1["ddim"]),
            ("ts-ddim", "uniform", {"query": "nominal"}, "ts-ddim (released)", published.TIME_SHIFT_TABLE1["ts-ddim"]),
            ("ts-ddim", "uniform", {"query": "shifted"}, "ts-ddim (Alg. 3)", published.TIME_SHIFT_TABLE1["ts-ddim"])]


def calibration(ev, model, cfg, steps, *, at_paper_scale: bool) -> list[dict]:
    """One row per calibration method and S: our metric with its bootstrap interval beside the published
    CIFAR-10 FID (the ratio only at paper scale, where weights, metric and data are the papers')."""
    rows = []
    for method, grid, opts, label, paper in _calibration_cells():
        for S in steps:
            r = image_cell(ev, model, cfg, "pretrained", method, S, grid=grid, label=label.replace(" ", "_"),
                           progress=False, **opts)
            ratio = r[ev.name] / paper[S] if at_paper_scale and S in paper else float("nan")
            rows.append({"method": label, "grid": grid, "steps": S, "NFE": r["nfe"], ev.name: r[ev.name], "lo": r["lo"],
                         "hi": r["hi"], "published FID": paper.get(S, float("nan")), "ratio to published": ratio})
    return rows


def neighbours(ev, model, cfg, plan: NotebookPlan, schedule) -> list[dict]:
    """Each neighbour at S0 = the smallest step count (Restart at N = S0/2 + 1 grid points); the counted NFE
    must equal the formula's."""
    S0, tau = min(plan.steps), cfg.loss.tau
    cells = [
        ("ddim", "ddim", S0, model, {}),
        ("pndm", "pndm", S0, model, {}),
        ("deis", "deis", S0, model, {}),
        ("restart", "restart", S0 // 2 + 1, model, {}),
        ("skip-tuning", "ddim", S0, skiptuning.SkipTuned(model, *plan.skip_tuning), {}),
        ("eps-scaling", "ddim", S0, epsscale.EpsScaled(model, epsscale.Constant(plan.eps_scale)), {}),
        ("implied skip 9", "ddim", S0, epsscale.EpsScaled(model, epsscale.implied_s2dm(schedule, 9, tau)), {}),
        ("implied skip 49", "ddim", S0, epsscale.EpsScaled(model, epsscale.implied_s2dm(schedule, 49, tau)), {}),
    ]
    rows = []
    for label, method, S, eps_model, opts in cells:
        r = image_cell(ev, eps_model, cfg, "pretrained", method, S, label="nb-" + label.replace(" ", "_"), progress=False, **opts)
        if r["nfe"] != samplers.nfe(method, S, schedule=schedule, profile_grid=cfg.sample.grid, **opts):
            raise AssertionError(f"NFE of {label} at {S}: measured {r['nfe']}, the formula disagrees")
        rows.append({"method": label, "sampler": method, "N or S": S, "NFE": r["nfe"], ev.name: r[ev.name], "lo": r["lo"],
                     "hi": r["hi"], "published FID (CIFAR-10)": published.cifar10_fid(label, S if label != "restart" else r["nfe"]) or ""})
    return rows


def finetune(cfg, paths, plan: NotebookPlan, source: str, device) -> tuple[dict, dict]:
    """Both arms trained ``plan.finetune_steps`` steps from ``source`` (no warm-up) into
    ``<runs>/pretrained/<arm>``; returns ``(EMA models, {arm: {"init_from": record, "log": loss.csv}})``."""
    over = {"train.steps": plan.finetune_steps, "train.warmup": 0, "train.ckpt_every": max(1, plan.finetune_steps // 4)}
    if plan.finetune_lr:
        over["train.lr"] = plan.finetune_lr
    cfg_ft = config.with_overrides(cfg, over)
    models, records = {}, {}
    for arm in PAPER_ARMS:
        run = paths.run(f"pretrained/{arm}")
        train(cfg_ft, arm, run, progress=False, init_from=source)
        models[arm] = generate.load_model(run, device)[0]
        records[arm] = {"init_from": json.loads((run / "run.json").read_text())["init_from"], "log": read_log(run)}
    return models, records


# (a, b, what) of the paired fine-tune comparisons
FINETUNE_PAIRS = (("ft-baseline", "ft-s2dm", "S²-DM fine-tune vs control"),
                  ("ft-baseline", "ft-baseline+implied", "implied scaling on the control (prediction)"),
                  ("ft-baseline+implied", "ft-s2dm", "S²-DM fine-tune vs control ÷ implied λ"))


def finetune_comparisons(ev, paths, cfg, models: dict, schedule, steps) -> list[dict]:
    """DDIM cells of the two fine-tunes and of the control with the implied ε-scaling, then the paired
    differences a − b of :data:`FINETUNE_PAIRS` at every S (> 0: b better)."""
    implied = epsscale.implied_s2dm(schedule, cfg.loss.skip, cfg.loss.tau)
    rows = []
    for S in steps:
        for _arm, label, eps_model in (("baseline", "ft-baseline", models["baseline"]), ("s2dm", "ft-s2dm", models["s2dm"]),
                                      ("baseline", "ft-baseline+implied", epsscale.EpsScaled(models["baseline"], implied))):
            image_cell(ev, eps_model, cfg, label, "ddim", S, progress=False)
        for a, b, what in FINETUNE_PAIRS:
            c = compare.compare_arms(paths, cfg, "ddim", S, a=a, b=b, ref=ev.ref)
            rows.append({"comparison": what, "a": a, "b": b, "steps": S, f"{ev.name} a": c["fd_a"], f"{ev.name} b": c["fd_b"],
                         "a − b": c["diff"], "lo": c["diff_lo"], "hi": c["diff_hi"], "rel %": 100 * c["rel"],
                         "excludes 0": c["excludes_zero"]})
    return rows
