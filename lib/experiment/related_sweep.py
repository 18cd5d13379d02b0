"""Notebook 06's experiment: the neighbouring methods (lib.related) on the very models of notebook 03.

* :class:`Plan`: what a profile runs (``experiment.*``: step counts, sample sizes, the CDM fine-tune,
  the Skip-Tuning and ε-scaling grids), the two sample sets A (selection) and B (report).
* :func:`train_cdm`: the CDM arm for every training seed: trained from scratch (gpu/paper), or at
  ci/cpu the baseline's final checkpoint fine-tuned under the CDM loss, with a control fine-tuned
  for the same steps under the baseline's loss (``baseline-ft``); runs in parallel processes.
* :class:`Cells`: every image cell (sampler × arm × step count × training seed), the grid search
  (seed 0, set A), the set-B report, the implied-scaling cells, and paired comparisons whose
  interval includes the seed-to-seed variation (lib.experiment.compare).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from lib import generate, samplers
from lib.experiment import compare, published, runs
from lib.infra import processes, rundir
from lib.infra.config import Config, with_overrides
from lib.experiment.evaluate import ImageEvaluator, image_cell
from lib.factory import build_model, resolve_device, schedule_of
from lib.infra.paths import Paths
from lib.related import epsscale, skiptuning
from lib.experiment.sweep import toy_sweep
from lib.experiment.steptime import seconds_per_step
from lib.infra.runlog import read_log
from lib.recipe import PAPER_ARMS
from lib.experiment.workers import call_in_workers

NEIGHBOUR_ARMS = PAPER_ARMS + ("cdm",)  # the neighbour cells' arms: the paper's two and CDM (IP is in the dose test)
# label: (method, steps -> num_steps, options). Heun/Restart take N grid points: N = S/2 + 1 puts Heun
# at the NFE of DDIM with S steps; Restart uses the paper's CIFAR-10 VP setting with K = 2.
SAMPLERS = {
    "ddim": ("ddim", lambda S: S, {}),
    "pndm": ("pndm", lambda S: S, {}),
    "ts-ddim": ("ts-ddim", lambda S: S, {}),
    "ts-pndm": ("ts-pndm", lambda S: S, {}),
    "heun": ("heun", lambda S: S // 2 + 1, {}),
    "restart": ("restart", lambda S: S // 2 + 1, {"k": 2}),
}
FAMILIES = tuple(SAMPLERS)
STEP_SAMPLERS = ("ddim", "pndm", "ts-ddim", "ts-pndm")  # the papers index these by S, the others by NFE


def num_steps(label: str, S: int) -> int:
    """The sampler's own step argument at the step count S of the plan."""
    return SAMPLERS[label][1](S) if label in SAMPLERS else S


# ---------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    cfg: Config  # set A: the selection set (and every plain cell)
    cfg_B: Config  # set B: the report set, other initial noise
    steps: tuple
    finetune: int  # 0: the CDM arm is trained from scratch
    seeds: tuple

    @classmethod
    def of(cls, cfg: Config) -> "Plan":
        x = cfg.experiment
        over = {}
        if x.related_n_samples:
            over["sample.n_samples"] = x.related_n_samples
        if x.related_toy_samples:  # the toy metric's MMD costs ~1 s per cell at 5000 samples
            over["toy.n_samples"] = x.related_toy_samples
        cfg = with_overrides(cfg, over)
        return cls(cfg, with_overrides(cfg, {"sample.seed": cfg.sample.seed + 1}), tuple(x.related_steps),
                   x.cdm_finetune, tuple(runs.image_seeds(cfg))[:x.related_seeds or None])

    @property
    def control(self) -> str:
        """What the CDM arm is compared with: its fine-tune control, or the baseline."""
        return "baseline-ft" if self.finetune else "baseline"

    @property
    def image_arms(self) -> tuple:
        return NEIGHBOUR_ARMS + ((self.control,) if self.finetune else ())

    def describe(self) -> str:
        x = self.cfg.experiment
        how = (f"fine-tune of {self.finetune} steps, {x.cdm_chain_steps or self.cfg.loss.cdm_steps} EM steps per chain"
               if self.finetune else "trained from scratch")
        return (f"profile {self.cfg.profile}: steps {self.steps}, {self.cfg.sample.n_samples} samples per image cell, "
                f"grid {self.cfg.sample.grid!r}, {len(self.seeds)} training seeds; CDM arm: {how}; Skip-Tuning grid "
                f"{x.related_rho_top} x {x.related_rho_bottom}; eps scaling b {x.related_es_b}, k {x.related_es_k}")


# ---------------------------------------------------------------------------- the CDM arm
def train_cdm(plan: Plan, paths: Paths, progress: bool = True) -> None:
    """The CDM arm (and at fine-tune profiles its control) for every image and toy seed, in parallel."""
    cfg, x = plan.cfg, plan.cfg.experiment
    if not plan.finetune:  # the full arm, as notebook 03 trains the others
        jobs = {**{("images", *k): j for k, j in runs.image_jobs(cfg, paths, ("cdm",)).items()},
                **{("toy", *k): j for k, j in runs.toy_jobs(cfg, paths, ("cdm",)).items()}}
        runs.train_parallel(jobs, x.workers, progress)
        return
    ft = {"train.ema_decay": x.cdm_ft_ema_decay, **({"loss.cdm_steps": x.cdm_chain_steps} if x.cdm_chain_steps else {})}
    cfg_ft = with_overrides(cfg, {**ft, "train.steps": cfg.train.steps + plan.finetune})
    cfg_toy_ft = with_overrides(cfg, {**ft, "toy.steps": cfg.toy.steps + x.cdm_toy_finetune})
    jobs = {}
    for s in plan.seeds:
        for arm, name in (("cdm", "cdm"), ("baseline", "baseline-ft")):
            jobs["images", name, s] = runs.Job(runs.seed_config(cfg_ft, s), arm, runs.image_run(paths, name, s))
    for key, job in runs.toy_jobs(cfg_toy_ft, paths, ("baseline",)).items():
        for arm, name in (("cdm", "cdm"), ("baseline", "baseline-ft")):
            jobs["toy", name, key[1]] = runs.Job(job.cfg, arm, runs.toy_run(paths, name, key[1]), toy=True)
    for (kind, _name, s), job in jobs.items():  # copy the baseline's final checkpoint where none is there yet
        src = runs.image_run(paths, "baseline", s) if kind == "images" else runs.toy_run(paths, "baseline", s)
        rundir.seed(src, job.out)
    runs.train_parallel(jobs, x.workers, progress)


def step_flops(cfg: Config, arm: str) -> int:
    """Floating-point operations of one training step of ``arm`` (loss with its no-grad CDM chains, backward),
    counted by torch.utils.flop_counter on a fresh model and one real batch: deterministic, unlike wall time."""
    from torch.utils.flop_counter import FlopCounterMode

    from lib import data
    from lib.recipe import EMA, make_loss, train_step

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_rampup)
    x0 = data.to_model_range(data.load_images(cfg.data)[0][:cfg.train.batch_size]).float()
    loss_fn = make_loss(cfg, arm, schedule_of(cfg))
    with processes.single_thread(), FlopCounterMode(display=False) as counter:
        train_step(model, opt, ema, loss_fn, x0, torch.Generator().manual_seed(0), grad_clip=cfg.train.grad_clip)
    return int(counter.get_total_flops())


def cdm_flops(plan: Plan) -> list[dict]:
    """FLOPs per training step of the baseline and the CDM arm (the paper's 5 EM steps per chain, and this
    profile's): the deterministic cost that notebook 06 checks (docs/method.md §8.4: never a wall-clock assertion)."""
    cfg = plan.cfg
    base = step_flops(cfg, "baseline")
    rows = [{"arm": "baseline", "EM steps per chain": 0, "GFLOP/step": base / 1e9, "× baseline": 1.0}]
    for k in sorted({5, cfg.experiment.cdm_chain_steps or 5}):
        f = step_flops(with_overrides(cfg, {"loss.cdm_steps": k}), "cdm")
        rows.append({"arm": "cdm", "EM steps per chain": k, "GFLOP/step": f / 1e9, "× baseline": f / base})
    return rows


def cdm_cost(plan: Plan, paths: Paths) -> list[dict]:
    """Seconds per training step of the baseline and the CDM arm (the paper's 5 EM steps per chain, and
    this profile's), measured in this process on one real batch; with the runs' loss.csv throughput.
    Wall time depends on the machine's load: a reported number, never a test (cdm_flops is the check)."""
    cfg = plan.cfg
    dev = str(resolve_device(cfg.train.device))
    base_s = seconds_per_step(cfg, "baseline", n_steps=2, device=dev)
    cost = [{"arm": "baseline", "EM steps per chain": 0, "s/step": base_s, "× baseline": 1.0}]
    for k in sorted({5, cfg.experiment.cdm_chain_steps or 5}):
        s = seconds_per_step(with_overrides(cfg, {"loss.cdm_steps": k}), "cdm", n_steps=2, device=dev)
        cost.append({"arm": "cdm", "EM steps per chain": k, "s/step": s, "× baseline": s / base_s})
    for row, run in zip(cost, (runs.image_run(paths, "baseline"), runs.image_run(paths, "cdm"))):
        row["loss.csv images/s"] = float(np.median(read_log(run)["images_per_s"]))
    return cost


# ---------------------------------------------------------------------------- image cells
class Cells:
    """Every image cell of notebook 06 for every training seed; ``rows`` in the order measured.

    :meth:`seed_cells` (phase ``"A"``: every sampler on every arm, and the implied scaling; phase
    ``"B"``: the set-B report with the chosen ρ and λ) runs each training seed in its own
    single-threaded process when ``experiment.workers`` ≠ 1 (:func:`phase_job`);
    the cells are the same either way."""

    def __init__(self, plan: Plan, paths: Paths, ev: ImageEvaluator):
        self.plan, self.paths, self.ev = plan, paths, ev
        self.rows: list[dict] = []
        self._models = {}
        self.rho, self.lam = None, None

    def model(self, arm: str, seed: int):
        """The EMA model of (arm, seed), loaded once; the control is the baseline where there is no fine-tune."""
        if arm == "baseline-ft" and not self.plan.finetune:
            arm = "baseline"
        if (arm, seed) not in self._models:
            self._models[arm, seed] = generate.load_model(runs.image_run(self.paths, arm, seed), self.ev.device)[0]
        return self._models[arm, seed]

    def cell(self, arm: str, label: str, S: int, seed: int, *, model=None, set_B: bool = False, method=None, **options):
        """One image cell (lib.experiment.evaluate.image_cell); set-B cells carry '@B' in their label."""
        c = self.plan.cfg_B if set_B else self.plan.cfg
        name = label + ("@B" if set_B else "")
        r = image_cell(self.ev, model or self.model(arm, seed), c, arm, method or label, S, seed=seed, label=name,
                       progress=False, **options)
        if r["nfe"] != samplers.nfe(method or label, S, schedule=schedule_of(c), profile_grid=c.sample.grid, **options):
            raise AssertionError(f"NFE of {name} at {S} steps: measured {r['nfe']}, formula disagrees")
        self.rows.append({**r, "set": "B" if set_B else "A"})
        return r

    def seed_cells(self, phase: str, progress: bool = True) -> None:
        """Phase "A" (before the grid search) or "B" (after it) for every training seed."""
        seeds = self.plan.seeds
        workers = processes.n_workers(self.plan.cfg.experiment.workers, len(seeds))
        if workers == 1:
            for s in seeds:
                self._phase(phase, s)
            return
        lam = None if self.lam is None else {"type": type(self.lam).__name__, **dataclasses.asdict(self.lam)}
        calls = {s: {**processes.job_context(self.plan.cfg, self.paths), "phase": phase, "seed": s, "rho": self.rho,
                     "lam": lam} for s in seeds}
        rows, failures = call_in_workers(phase_job, calls, workers,
                                                   progress=progress, describe=lambda s: f"06 cells phase {phase}, seed {s}")
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(seeds)} seeds' cells failed:\n" + "\n".join(failures))
        for s in seeds:
            self.rows += rows[s]

    def _phase(self, phase: str, seed: int) -> None:
        if phase == "A":
            self.sampler_cells(seed)
            self.implied_cells(seed)
        elif phase == "B":
            self.set_B_cells(seed)
        else:
            raise ValueError(f"phase must be 'A' or 'B', got {phase!r}")

    def sampler_cells(self, seed: int):
        """Every sampler of SAMPLERS on every arm (the control only under DDIM and PNDM)."""
        p = self.plan
        for arm in p.image_arms:
            for label, (method, n_of, opts) in SAMPLERS.items():
                if arm == p.control and p.finetune and label not in ("ddim", "pndm"):
                    continue  # the control only anchors the CDM comparison
                for S in p.steps:
                    self.cell(arm, label, n_of(S), seed, method=method, **opts)

    def grid_search(self) -> tuple[list[dict], tuple, object]:
        """Skip-Tuning ρ and ε-scaling λ_t chosen by FD on the baseline of seed 0, set A, DDIM at the
        smallest step count; the untuned setting is a candidate too. Returns (table rows, ρ, λ)."""
        x, name, S0 = self.plan.cfg.experiment, self.ev.name, min(self.plan.steps)
        base = self.model("baseline", 0)
        b0 = next(r for r in self.rows if r["arm"] == "baseline" and r["method"] == "ddim" and r["steps"] == S0
                  and r["seed"] == 0)

        def entry(family, setting, value, r):
            return {"family": family, "setting": setting, "value": value, name: r[name], "lo": r["lo"], "hi": r["hi"]}

        search = [entry("skip-tuning", "rho=(1,1)", (1.0, 1.0), b0)]
        for top in x.related_rho_top:
            for bottom in x.related_rho_bottom:
                if (top, bottom) != (1.0, 1.0):
                    st = skiptuning.SkipTuned(base, top, bottom)
                    search.append(entry("skip-tuning", f"rho=({top:g},{bottom:g})", (top, bottom),
                                        self.cell("baseline", "ddim+" + st.label, S0, 0, model=st, method="ddim")))
        search.append(entry("eps-scaling", "lambda=1", epsscale.Constant(1.0), b0))
        for b in x.related_es_b:
            lam = epsscale.Constant(b)
            search.append(entry("eps-scaling", lam.label, lam, self.cell("baseline", "ddim+" + lam.label, S0, 0,
                                                                       model=epsscale.EpsScaled(base, lam), method="ddim")))
        b_best = min((e for e in search if e["family"] == "eps-scaling"), key=lambda e: e[name])["value"].b
        for k in x.related_es_k:  # the linear form around the best constant
            lam = epsscale.Linear(b_best, k, self.plan.cfg.diffusion.T)
            search.append(entry("eps-scaling", lam.label, lam, self.cell("baseline", "ddim+" + lam.label, S0, 0,
                                                                       model=epsscale.EpsScaled(base, lam), method="ddim")))
        best = {f: min((e for e in search if e["family"] == f), key=lambda e: e[name]) for f in ("skip-tuning", "eps-scaling")}
        for e in search:
            e["chosen"] = e is best[e["family"]]
        self.rho, self.lam = tuple(best["skip-tuning"]["value"]), best["eps-scaling"]["value"]
        return [{k: v for k, v in e.items() if k != "value"} for e in search], self.rho, self.lam

    @property
    def tuned_label(self) -> str:
        return "ddim+" + skiptuning.SkipTuned(self.model("baseline", 0), *self.rho).label

    @property
    def es_label(self) -> str:
        return "ddim+" + self.lam.label

    def set_B_cells(self, seed: int):
        """Plain and tuned DDIM on set B (other initial noise), baseline and S²-DM (= S²-DM + Skip-Tuning)."""
        for arm in ("baseline", "s2dm"):
            m = self.model(arm, seed)
            for S in self.plan.steps:
                self.cell(arm, "ddim", S, seed, set_B=True)
                self.cell(arm, self.tuned_label, S, seed, set_B=True, model=skiptuning.SkipTuned(m, *self.rho), method="ddim")
                if arm == "baseline":
                    self.cell(arm, self.es_label, S, seed, set_B=True, model=epsscale.EpsScaled(m, self.lam), method="ddim")

    def implied_cells(self, seed: int):
        """The baseline ÷ the λ_t that S²-DM's loss implies (epsscale.implied_s2dm), DDIM, set A."""
        c = self.plan.cfg
        implied = epsscale.implied_s2dm(schedule_of(c), c.loss.skip, c.loss.tau)
        for S in self.plan.steps:
            self.cell("baseline", "ddim+implied", S, seed, model=epsscale.EpsScaled(self.model("baseline", seed), implied),
                      method="ddim")

    # ------------------------------------------------------------------------ comparisons
    def compare(self, a: tuple, b: tuple, S: int, what: str) -> dict:
        """FD(a) − FD(b) (> 0: b better) for (arm, label) cells over every training seed (lib.experiment.compare);
        Heun/Restart at N = S/2 + 1; '@B' labels read set B."""
        p, name = self.plan, self.ev.name
        n = num_steps(a[1], S)
        cfg_a = p.cfg_B if a[1].endswith("@B") else p.cfg
        cfg_b = p.cfg_B if b[1].endswith("@B") else p.cfg
        c = compare.compare_over_seeds(self.paths, cfg_a, a, b, n, self.ev.ref, p.seeds, cfg_b=cfg_b,
                                       producer="06_related_methods")
        return {"comparison": what, "a": "/".join(a), "b": "/".join(b), "steps": n, f"{name} a": c["fd_a"],
                f"{name} b": c["fd_b"], "a − b": c["diff"], "lo": c["diff_lo"], "hi": c["diff_hi"],
                "rel %": 100 * c["rel"], "excludes 0": c["excludes_zero"], "n_seeds": c["n_seeds"],
                "boot lo": c["boot_lo"], "boot hi": c["boot_hi"], "per_seed": c["per_seed"], "diff": c["diff"],
                "diff_lo": c["diff_lo"], "diff_hi": c["diff_hi"]}

    def shrinkage(self) -> list[dict]:
        """The shrinkage test: implied scaling on the baseline, trained S²-DM vs baseline, and trained
        S²-DM vs baseline ÷ implied λ (DDIM, set A)."""
        out = []
        for S in self.plan.steps:
            out += [{**self.compare(("baseline", "ddim"), ("baseline", "ddim+implied"), S, "implied scaling on the baseline"),
                     "short": f"base vs base÷λ, S={S}"},
                    {**self.compare(("baseline", "ddim"), ("s2dm", "ddim"), S, "trained S²-DM vs baseline"),
                     "short": f"base vs S²-DM, S={S}"},
                    {**self.compare(("baseline", "ddim+implied"), ("s2dm", "ddim"), S, "trained S²-DM vs baseline ÷ implied λ"),
                     "short": f"base÷λ vs S²-DM, S={S}"}]
        return out

    def comparisons(self) -> list[dict]:
        """What each method does on each arm, and whether S²-DM (or CDM) still helps on top of it."""
        p, out = self.plan, []
        for S in p.steps:
            for arm in NEIGHBOUR_ARMS:
                out += [self.compare((arm, "ddim"), (arm, "ts-ddim"), S, f"Time-Shift on DDIM ({arm})"),
                        self.compare((arm, "pndm"), (arm, "ts-pndm"), S, f"Time-Shift on F-PNDM ({arm})"),
                        self.compare((arm, "heun"), (arm, "restart"), S, f"Restart vs Heun ({arm})")]
            for label in SAMPLERS:
                out.append(self.compare(("baseline", label), ("s2dm", label), S, f"S²-DM vs baseline under {label}"))
                out.append(self.compare(("baseline", label), ("cdm", label), S, f"CDM vs baseline under {label}"))
            if p.finetune:
                for label in ("ddim", "pndm"):
                    out.append(self.compare((p.control, label), ("cdm", label), S,
                                            f"CDM vs control (same fine-tune, baseline loss) under {label}"))
            for arm in ("baseline", "s2dm"):
                out.append(self.compare((arm, "ddim@B"), (arm, self.tuned_label + "@B"), S,
                                        f"Skip-Tuning {self.rho} on {arm} (set B)"))
            out.append(self.compare(("baseline", "ddim@B"), ("baseline", self.es_label + "@B"), S,
                                    f"eps scaling {self.lam.label} (set B)"))
        return out

    def methods_table(self) -> list[dict]:
        """Every cell with the FID its method's paper reports on CIFAR-10 (lib.experiment.published), for orientation."""
        out = []
        for r in sorted(self.rows, key=lambda r: (r["set"], r["arm"], r["method"], r["nfe"])):
            key = r["steps"] if r["method"] in STEP_SAMPLERS else r["nfe"]
            fid = published.cifar10_fid(r["method"], key)
            out.append({"set": r["set"], "seed": r["seed"], "arm": r["arm"], "method": r["method"], "steps": r["steps"],
                        "NFE": r["nfe"], self.ev.name: f"{r[self.ev.name]:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]",
                        "paper FID (CIFAR-10, their pipeline)": "" if fid is None else fid})
        return out


# ---------------------------------------------------------------------------- the toy
def toy_cells(plan: Plan, paths: Paths) -> list[dict]:
    """DDIM on every toy arm, Time-Shift and Restart on the three models, and the implied ε scaling on
    the baseline and S²-DM (Skip-Tuning does not apply: the toy MLP has no skip connections)."""
    from lib.infra.config import toy_config

    cfg = plan.cfg
    toy_arms = NEIGHBOUR_ARMS + ((plan.control,) if plan.finetune else ())
    implied = epsscale.implied_s2dm(schedule_of(toy_config(cfg)), cfg.loss.skip, cfg.loss.tau)
    wrap = _ImpliedWrapper(implied)
    todo = [("ddim", toy_arms, None, ""), ("ts-ddim", NEIGHBOUR_ARMS, None, ""), ("restart", NEIGHBOUR_ARMS, None, ""),
            ("ddim", ("baseline", "s2dm"), wrap, "+implied")]
    rows = []
    for label, arms, wrapper, tag in todo:
        method, n_of, opts = SAMPLERS[label]
        rows += toy_sweep(cfg, paths, [method], sorted({n_of(S) for S in plan.steps}), arms=arms, progress=False,
                          model_wrapper=wrapper, tag=tag, **opts)
    return rows


class _ImpliedWrapper:
    """``(model, arm) -> EpsScaled(model, λ)``: the model wrapper toy_sweep takes."""

    def __init__(self, lam):
        self.lam = lam

    def __call__(self, model, arm):
        return epsscale.EpsScaled(model, self.lam)


def phase_job(config: dict, profile: str, root: str, phase: str, seed: int, rho, lam) -> list[dict]:
    """One phase of one training seed's cells as a worker call (lib.experiment.workers.call_in_workers)."""
    cfg, paths = processes.job_context_of(config, profile, root)
    plan = Plan.of(cfg)  # cfg is already the plan's: Plan.of is idempotent
    cells = Cells(plan, paths, ImageEvaluator(plan.cfg, paths, progress=False))
    if rho is not None:
        cells.rho = tuple(rho)
    if lam is not None:
        lam = dict(lam)
        cells.lam = getattr(epsscale, lam.pop("type"))(**lam)
    cells._phase(phase, seed)
    return cells.rows
