"""The experiment grid of notebooks 03–07: train the arms, then measure every (arm, sampler, steps) cell.

* Image arms share one training seed (same initial weights, data order, t and noise streams), so
  they differ only in the loss; every cell of every arm starts from the same x_T (paired samples).
* Toy arms are trained with ``toy.n_seeds`` seeds each; a cell's uncertainty is the spread over
  seeds (a t-interval), and the arm difference is a paired t-interval over seeds.
* Image cells are measured with the offline classifier Fréchet distance (``FD_clf``, never called
  FID) with a bootstrap interval, or with Inception FID (clean-fid) at profiles gpu/paper.
Features of every image cell are saved so that notebook 05 can form paired comparisons from files.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from lib import data, generate, metrics, samplers
from lib.config import Config, toy_config, with_overrides
from lib.paths import Paths
from lib.factory import resolve_device, schedule_of
from lib.train import train

ARMS = ("baseline", "s2dm")


# ---------------------------------------------------------------------------- training
def image_run(paths: Paths, arm: str) -> Path:
    return paths.run(f"images/{arm}")


def toy_run(paths: Paths, arm: str, seed: int) -> Path:
    return paths.run(f"toy/{arm}-seed{seed}")


def train_images(cfg: Config, paths: Paths, arms=ARMS, progress=True) -> dict:
    """Train (or resume, or skip when finished) every image arm; returns {arm: run_dir}."""
    return {arm: train(cfg, arm, image_run(paths, arm), progress=progress).parent for arm in arms}


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


def train_toys(cfg: Config, paths: Paths, arms=ARMS, progress=True) -> dict:
    """Train ``toy.n_seeds`` seeds of every arm on the 2-D toy; returns {(arm, seed): run_dir}."""
    with single_thread():
        return _train_toys(cfg, paths, arms, progress)


def _train_toys(cfg, paths, arms, progress):
    out = {}
    for seed in range(cfg.toy.n_seeds):
        tcfg = with_overrides(toy_config(cfg), {"train.seed": seed})
        for arm in arms:
            out[arm, seed] = train(tcfg, arm, toy_run(paths, arm, seed), progress=progress).parent
    return out


# ---------------------------------------------------------------------------- uncertainty over seeds
def seed_interval(values, level: float = 0.95) -> dict:
    """Mean and two-sided Student-t interval over independent seeds."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return dict(mean=m, lo=float("nan"), hi=float("nan"), n=len(v))
    h = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return dict(mean=m, lo=m - h, hi=m + h, n=len(v))


# ---------------------------------------------------------------------------- toy cells
def toy_sweep(cfg: Config, paths: Paths, methods, steps, arms=ARMS, grid=None, progress=True,
              model_wrapper=None, tag: str = "", **options) -> list[dict]:
    """Every (arm, method, steps) cell on the toy, per seed: :func:`lib.metrics.toy_metrics`.

    ``model_wrapper(model, arm) -> eps_model`` lets notebook 06 apply training-free fixes."""
    with single_thread():
        return _toy_sweep(cfg, paths, methods, steps, arms, grid, model_wrapper, tag, options)


def _toy_sweep(cfg, paths, methods, steps, arms, grid, model_wrapper, tag, options):
    tcfg = toy_config(cfg)
    gmm = data.toy_distribution(tcfg.data.dataset)
    schedule = schedule_of(tcfg)
    rows = []
    for seed in range(cfg.toy.n_seeds):
        for arm in arms:
            model, _ = generate.load_model(toy_run(paths, arm, seed))
            eps_model = model_wrapper(model, arm) if model_wrapper else model
            for method in methods:
                for S in steps:
                    info = {}
                    x = generate.generate(eps_model, schedule, (2,), tcfg.sample.n_samples, method=method,
                                          num_steps=S, grid=samplers.grid_for(method, grid or tcfg.sample.grid),
                                          batch_size=tcfg.sample.batch_size, seed=tcfg.sample.seed,
                                          progress=False, info=info, **options)
                    m = metrics.toy_metrics(x, gmm, seed=seed)
                    rows.append({"arm": arm, "method": method + tag, "steps": S, "seed": seed, "nfe": info["nfe"],
                                 **{k: m[k] for k in ("fd_exact", "mmd", "nll", "mode_coverage", "frac_in_modes")}})
    return rows


def summarize_toy(rows: list[dict], metric: str = "mmd", level: float = 0.95, baseline: str = "baseline",
                  other: str = "s2dm") -> list[dict]:
    """Per (method, steps): each arm's mean over seeds with its t-interval, and the paired difference
    baseline − other (positive: ``other`` is better for lower-is-better metrics) with its t-interval."""
    out = []
    keys = sorted({(r["method"], r["steps"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for method, S in keys:
        cell = [r for r in rows if r["method"] == method and r["steps"] == S]
        by = {a: {r["seed"]: r[metric] for r in cell if r["arm"] == a} for a in {r["arm"] for r in cell}}
        row = {"method": method, "steps": S, "nfe": cell[0]["nfe"], "metric": metric}
        for a, vals in sorted(by.items()):
            ci = seed_interval(list(vals.values()), level)
            row.update({f"{a}": ci["mean"], f"{a}_lo": ci["lo"], f"{a}_hi": ci["hi"]})
        if baseline in by and other in by:
            seeds = sorted(set(by[baseline]) & set(by[other]))
            d = seed_interval([by[baseline][s] - by[other][s] for s in seeds], level)
            row.update({"diff": d["mean"], "diff_lo": d["lo"], "diff_hi": d["hi"], "n_seeds": len(seeds),
                        "excludes_zero": bool(d["lo"] > 0 or d["hi"] < 0)})
        out.append(row)
    return out


# ---------------------------------------------------------------------------- image cells
class ImageEvaluator:
    """Features of the metric network and the reference set (the training images), computed once."""

    def __init__(self, cfg: Config, paths: Paths, device=None, progress=True):
        self.cfg, self.paths = cfg, paths
        self.device = device or resolve_device(cfg.train.device)
        self.metric = cfg.eval.metric
        if self.metric == "classifier":
            images, labels = data.load_images(cfg.data)
            if labels is None:
                raise ValueError(f"the classifier metric needs labels; {cfg.data.dataset} has none: use eval.metric=inception")
            self.net = metrics.get_classifier(cfg.data, cfg.eval, cache_dir=paths.base / "data" / "classifiers",
                                              device=self.device, progress=progress)
            self.ref = metrics.features(self.net, data.to_model_range(images).to(self.device))
        else:  # Inception FID against clean-fid's stored training-set statistics (checked offline first)
            from lib import fid

            self.fid = fid
            self.ref = fid.reference_stats(cfg.data.dataset, cfg.data.image_size, "train", cfg.eval.fid_mode)
        self.name = "FD_clf" if self.metric == "classifier" else "FID"

    def features(self, x_model_range: torch.Tensor) -> np.ndarray:
        if self.metric == "classifier":
            return metrics.features(self.net, x_model_range.to(self.device))
        return self.fid.inception_features(data.from_model_range(x_model_range), mode=self.cfg.eval.fid_mode,
                                           device=self.device)

    def score(self, feats: np.ndarray, seed: int = 0) -> dict:
        return metrics.fd_bootstrap(feats, self.ref, n_boot=self.cfg.eval.n_boot, level=self.cfg.eval.ci_level,
                                    seed=seed)


def _cell_name(cfg: Config, arm: str, method: str, steps: int) -> str:
    # The sample set (its size and seed) is part of the name, so notebooks that measure the same
    # (arm, sampler, steps) on other sample sets (06: fewer samples, sets A/B) never overwrite 04's.
    return f"{arm}__{method}__S{steps}__n{cfg.sample.n_samples}__seed{cfg.sample.seed}"


def features_path(paths: Paths, cfg: Config, arm: str, method: str, steps: int) -> Path:
    return paths.runs / "features" / f"{_cell_name(cfg, arm, method, steps)}.npy"


def samples_path(paths: Paths, cfg: Config, arm: str, method: str, steps: int) -> Path:
    return paths.runs / "samples" / f"{_cell_name(cfg, arm, method, steps)}.pt"


def image_cell(ev: ImageEvaluator, eps_model, cfg: Config, arm: str, method: str, steps: int, *,
               grid=None, progress=True, label: str | None = None, **options) -> dict:
    """Generate ``sample.n_samples`` images for one cell, save samples and features, score them.

    ``label`` names the cell in files and tables (default: the method name), so a sampler with
    options (or a wrapped model) gets a name of its own."""
    label = label or method
    schedule = schedule_of(cfg)
    m = cfg.model
    info = {}
    x = generate.generate(eps_model, schedule, (m.in_channels, m.resolution, m.resolution), cfg.sample.n_samples,
                          method=method, num_steps=steps, grid=samplers.grid_for(method, grid or cfg.sample.grid),
                          batch_size=cfg.sample.batch_size, seed=cfg.sample.seed, device=ev.device,
                          progress=progress, info=info, **options)
    generate.save_samples(x, samples_path(ev.paths, cfg, arm, label, steps))
    # Score the images as they would be stored (uint8), as FID tools do.
    x = data.to_model_range(data.from_model_range(x))
    f = ev.features(x)
    p = features_path(ev.paths, cfg, arm, label, steps)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, f)
    s = ev.score(f)
    return {"arm": arm, "method": label, "steps": steps, "nfe": info["nfe"], ev.name: s["value"],
            "lo": s["lo"], "hi": s["hi"], "n": s["n"]}


def image_sweep(cfg: Config, paths: Paths, methods, steps, arms=ARMS, grid=None, progress=True) -> list[dict]:
    """Every (arm, method, steps) image cell with the arms' trained EMA models."""
    ev = ImageEvaluator(cfg, paths, progress=progress)
    rows = []
    for arm in arms:
        model, _ = generate.load_model(paths.require(image_run(paths, arm) / "final.pt", "03_train").parent, ev.device)
        for method in methods:
            for S in steps:
                rows.append(image_cell(ev, model, cfg, arm, method, S, grid=grid, progress=progress))
    return rows


def compare_arms(paths: Paths, cfg: Config, method: str, steps: int, a: str = "baseline", b: str = "s2dm",
                 ref: np.ndarray | None = None) -> dict:
    """Paired-sample comparison of two arms' saved features (bootstrap; see lib.metrics.compare_bootstrap)."""
    fa = np.load(paths.require(features_path(paths, cfg, a, method, steps), "04_sampler_sweeps"))
    fb = np.load(paths.require(features_path(paths, cfg, b, method, steps), "04_sampler_sweeps"))
    # Both arms' sample i start from the same x_T: a paired bootstrap.
    return metrics.compare_bootstrap(fa, fb, ref, n_boot=cfg.eval.n_boot, level=cfg.eval.ci_level, paired=True)


def save_reference(ev: ImageEvaluator) -> Path:
    """The reference features (classifier) or (μ, Σ) (Inception) for notebook 05, as ``reference.npz``."""
    p = ev.paths.runs / "features" / "reference.npz"
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(ev.ref, tuple):
        np.savez(p, mu=ev.ref[0], sigma=ev.ref[1])
    else:
        np.savez(p, features=ev.ref)
    return p


def load_reference(paths: Paths):
    with np.load(paths.require(paths.runs / "features" / "reference.npz", "04_sampler_sweeps")) as f:
        return f["features"] if "features" in f else (f["mu"], f["sigma"])


def write_json(path, obj) -> Path:
    from lib.checkpoint import atomic_write_text
    return atomic_write_text(path, json.dumps(obj, indent=2))


def sample_grid(x: torch.Tensor, nrow: int = 8):
    """A [H', W'] or [H', W', 3] numpy image of the first nrow² samples (model range in, [0, 1] out)."""
    import torchvision

    g = torchvision.utils.make_grid(x[: nrow * nrow].float().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=1)
    g = g.permute(1, 2, 0).numpy()
    return g[..., 0] if g.shape[-1] == 1 or (g[..., 0] == g[..., 1]).all() else g
