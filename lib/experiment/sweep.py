"""The experiment grid of notebooks 04 and 06: every (arm, sampler, steps, training seed) cell.

* Toy cells: per toy seed, exact measures against the known mixture (lib.measure.toymetrics); a cell's
  uncertainty is the spread over seeds (lib.measure.stats).
* Image cells: per image training seed, FD_clf and KID (or FID) with a sample bootstrap (lib.experiment.evaluate);
  every cell of every arm of training seed s starts from the same x_T (paired samples; independent
  between seeds: lib.experiment.evaluate.sample_seed), and the arms of one seed share initial weights,
  data order and noise streams (lib.experiment.runs), so arm differences are paired twice.
  Seeds below ``experiment.sweep_seeds`` run every sampler × step cell, the others only the headline
  cells (:func:`seed_cells`).
"""
from __future__ import annotations


from lib import data, generate

from lib.infra import processes

from lib.measure import toymetrics
from lib.infra.config import Config, toy_config
from lib.experiment.evaluate import ImageEvaluator, image_cell
from lib.factory import schedule_of
from lib.infra.paths import Paths
from lib.experiment.runs import image_run, image_seeds, toy_run
from lib.recipe import PAPER_ARMS
from lib.experiment.workers import call_in_workers

__all__ = ["PAPER_ARMS", "image_run", "toy_run", "toy_sweep", "image_sweep"]


def toy_sweep(cfg: Config, paths: Paths, methods, steps, arms=PAPER_ARMS, grid=None, progress=True,
              model_wrapper=None, tag: str = "", **options) -> list[dict]:
    """Every (arm, method, steps) cell on the toy, per seed: :func:`lib.measure.toymetrics.toy_metrics`.

    ``model_wrapper(model, arm) -> eps_model`` lets notebook 06 apply training-free fixes."""
    tcfg = toy_config(cfg)
    gmm = data.toy_distribution(tcfg.data.dataset)
    schedule = schedule_of(tcfg)
    rows = []
    with processes.single_thread():
        for seed in range(cfg.toy.n_seeds):
            for arm in arms:
                model, _ = generate.load_model(toy_run(paths, arm, seed))
                eps_model = model_wrapper(model, arm) if model_wrapper else model
                for method in methods:
                    for S in steps:
                        info = {}
                        x = generate.generate(eps_model, schedule, (2,), tcfg.sample.n_samples, method=method,
                                              num_steps=S, profile_grid=grid or tcfg.sample.grid,
                                              batch_size=tcfg.sample.batch_size, seed=tcfg.sample.seed,
                                              progress=False, info=info, **options)
                        m = toymetrics.toy_metrics(x, gmm, seed=seed)
                        rows.append({"arm": arm, "method": method + tag, "steps": S, "seed": seed, "nfe": info["nfe"],
                                     **{k: m[k] for k in ("fd_exact", "mmd", "nll", "mode_coverage", "frac_in_modes")}})
    return rows


def headline_cells(cfg: Config, methods, steps) -> list[tuple[str, int]]:
    """The cells every training seed runs: the first sampler at ``experiment.headline_steps`` (default:
    the two smallest step counts)."""
    hs = cfg.experiment.headline_steps or tuple(sorted(steps)[:2])
    missing = [S for S in hs if S not in steps]
    if missing:
        raise ValueError(f"experiment.headline_steps {missing} are not among the sweep's steps {tuple(steps)}: "
                         "set experiment.headline_steps to a subset of sample.steps")
    return [(methods[0], S) for S in hs]


def primary_cells(cfg: Config, methods, steps) -> list[tuple[str, int]]:
    """The confirmatory family of the comparison, declared by the profile before any data:
    ``experiment.primary`` ("ddim-10", …), default the :func:`headline_cells`. Every other cell is exploratory."""
    if not cfg.experiment.primary:
        return headline_cells(cfg, methods, steps)
    cells = [(k.rsplit("-", 1)[0], int(k.rsplit("-", 1)[1])) for k in cfg.experiment.primary]
    missing = [f"{m}-{S}" for m, S in cells if m not in methods or S not in steps]
    if missing:
        raise ValueError(f"experiment.primary names cells {missing} outside the sweep (samplers {list(methods)}, steps "
                         f"{list(steps)}): set it to cells of sample.methods × sample.steps")
    return cells


def families(cfg: Config, keys) -> dict:
    """{(method, steps): "primary" | "exploratory"} for the cells ``keys`` (:func:`primary_cells`)."""
    keys = list(keys)
    methods, steps = list(dict.fromkeys(k[0] for k in keys)), sorted({k[1] for k in keys})
    primary = set(primary_cells(cfg, methods, steps))
    return {k: "primary" if k in primary else "exploratory" for k in keys}


def full_sweep_seeds(cfg: Config) -> range:
    """The training seeds that run every cell: 0 … ``experiment.sweep_seeds`` − 1 (0: every seed)."""
    return range(cfg.experiment.sweep_seeds or cfg.experiment.n_seeds)


def seed_cells(cfg: Config, methods, steps, seed: int) -> list[tuple[str, int]]:
    """The (method, steps) cells of training seed ``seed``: the full sweep for seeds below
    ``experiment.sweep_seeds`` (0: every seed), else only :func:`headline_cells` — the budget puts the
    seeds where the power computation needs them (bench/seed_budget.py)."""
    full = [(m, S) for m in methods for S in steps]
    k = cfg.experiment.sweep_seeds
    return full if k == 0 or seed < k else [c for c in full if c in headline_cells(cfg, methods, steps)]


def image_sweep(ev: ImageEvaluator, cfg: Config, paths: Paths, methods, steps, arms=PAPER_ARMS, seeds=None, grid=None,
                progress=True) -> list[dict]:
    """Every (seed, arm, method, steps) image cell with the arms' trained EMA models (lib.experiment.evaluate.image_cell),
    in that order.

    With ``experiment.workers`` ≠ 1 and several (seed, arm) groups, each group runs in its own
    single-threaded worker process (:func:`group_job`, lib.experiment.workers.call_in_workers), at most
    ``workers`` at a time; the cells are the same either way (same models, x_T and sampler noise)."""
    seeds = list(image_seeds(cfg) if seeds is None else seeds)
    groups = [(s, a) for s in seeds for a in arms]
    for s, a in groups:
        paths.require(image_run(paths, a, s) / "final.pt", "03_train")
    workers = processes.n_workers(cfg.experiment.workers, len(groups))
    if workers == 1:
        return [r for s, a in groups for r in _group_cells(ev, cfg, paths, a, s, methods, steps, grid, progress)]
    if progress:
        print(f"{len(groups)} (seed, arm) groups of {len(methods) * len(steps)} cells (headline cells only from seed "
              f"{cfg.experiment.sweep_seeds or len(seeds)} on), {workers} processes at a time", flush=True)
    calls = {(s, a): {**processes.job_context(cfg, paths), "arm": a, "seed": s, "methods": list(methods),
                      "steps": list(steps), "grid": grid} for s, a in groups}
    rows, failures = call_in_workers(group_job, calls, workers, progress=progress,
                                               describe=lambda k: f"image cells of {k[1]}, seed {k[0]}")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(groups)} groups of image cells failed (the finished cells' "
                           "samples and features are kept):\n" + "\n".join(failures))
    return [r for k in groups for r in rows[k]]


def _group_cells(ev, cfg, paths, arm, seed, methods, steps, grid, progress):
    model, _ = generate.load_model(image_run(paths, arm, seed), ev.device)
    return [image_cell(ev, model, cfg, arm, method, S, seed=seed, grid=grid, progress=progress)
            for method, S in seed_cells(cfg, methods, steps, seed)]


def group_job(config: dict, profile: str, root: str, arm: str, seed: int, methods, steps, grid) -> list[dict]:
    """The image cells of one (seed, arm) group as a worker call (lib.experiment.workers.call_in_workers)."""
    cfg, paths = processes.job_context_of(config, profile, root)
    return _group_cells(ImageEvaluator(cfg, paths, progress=False), cfg, paths, arm, seed, methods, steps, grid, False)
