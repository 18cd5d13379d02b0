"""The experiment grid of notebooks 04 and 06: every (arm, sampler, steps, training seed) cell.

* Toy cells: per toy seed, exact measures against the known mixture (lib.toymetrics); a cell's
  uncertainty is the spread over seeds (lib.stats).
* Image cells: per image training seed, FD_clf or FID with a sample bootstrap (lib.evaluate); every
  cell of every arm starts from the same x_T (paired samples), and the arms of one seed share
  initial weights, data order and noise streams (lib.runs), so arm differences are paired twice.
"""
from __future__ import annotations

import contextlib

import torch

from lib import data, generate, toymetrics
from lib.config import Config, toy_config
from lib.evaluate import ImageEvaluator, image_cell
from lib.factory import schedule_of
from lib.paths import Paths
from lib.runs import ARMS, image_run, image_seeds, toy_run

__all__ = ["ARMS", "image_run", "toy_run", "single_thread", "toy_sweep", "image_sweep"]


@contextlib.contextmanager
def single_thread():
    """Run the 2-D toy single-threaded: its tensors are so small that intra-op threads only add
    synchronisation (and, on a busy 2-core machine, contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def toy_sweep(cfg: Config, paths: Paths, methods, steps, arms=ARMS, grid=None, progress=True,
              model_wrapper=None, tag: str = "", **options) -> list[dict]:
    """Every (arm, method, steps) cell on the toy, per seed: :func:`lib.toymetrics.toy_metrics`.

    ``model_wrapper(model, arm) -> eps_model`` lets notebook 06 apply training-free fixes."""
    tcfg = toy_config(cfg)
    gmm = data.toy_distribution(tcfg.data.dataset)
    schedule = schedule_of(tcfg)
    rows = []
    with single_thread():
        for seed in range(cfg.toy.n_seeds):
            for arm in arms:
                model, _ = generate.load_model(toy_run(paths, arm, seed))
                eps_model = model_wrapper(model, arm) if model_wrapper else model
                for method in methods:
                    for S in steps:
                        info = {}
                        x = generate.generate(eps_model, schedule, (2,), tcfg.sample.n_samples, method=method,
                                              num_steps=S, grid=grid or tcfg.sample.grid,
                                              batch_size=tcfg.sample.batch_size, seed=tcfg.sample.seed,
                                              progress=False, info=info, **options)
                        m = toymetrics.toy_metrics(x, gmm, seed=seed)
                        rows.append({"arm": arm, "method": method + tag, "steps": S, "seed": seed, "nfe": info["nfe"],
                                     **{k: m[k] for k in ("fd_exact", "mmd", "nll", "mode_coverage", "frac_in_modes")}})
    return rows


def image_sweep(ev: ImageEvaluator, cfg: Config, paths: Paths, methods, steps, arms=ARMS, seeds=None, grid=None,
                progress=True, report=None) -> list[dict]:
    """Every (seed, arm, method, steps) image cell with the arms' trained EMA models (lib.evaluate.image_cell);
    ``report(row)`` is called after each cell (e.g. to print it)."""
    rows = []
    for seed in (image_seeds(cfg) if seeds is None else seeds):
        for arm in arms:
            run = paths.require(image_run(paths, arm, seed) / "final.pt", "03_train").parent
            model, _ = generate.load_model(run, ev.device)
            for method in methods:
                for S in steps:
                    rows.append(image_cell(ev, model, cfg, arm, method, S, seed=seed, grid=grid, progress=progress))
                    if report:
                        report(rows[-1])
    return rows
