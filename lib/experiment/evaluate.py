"""Image cells: generate one (arm, sampler, steps, training seed) sample set, store it, measure it.

The metric is the offline classifier Fréchet distance (``FD_clf``, never called FID; lib.measure.classifier
and lib.measure.metrics) with a bias-corrected percentile bootstrap interval over the generated samples,
and beside it KID (unbiased MMD², cubic kernel) on the same features with a percentile bootstrap over
the samples; at profiles gpu/paper, on Inception features (clean-fid): FID against clean-fid's stored
training-set statistics (comparable with the published tables) and KID, the headline as at ``cpu``,
against the training set's Inception features (lib.measure.reference: computed once, cached under a
key of the code, network, mode and images), on the cell's first ``eval.kid_samples`` samples. Both
intervals cover the samples of one training seed, its networks fixed. A rehearsal (``experiment.rehearsal``,
lib.infra.rehearsal) runs the same path with a stand-in feature network and its own statistics.

Initial noise: every cell of training seed s (both arms, every sampler and method, notebooks 04, 06,
08) starts from the x_T of :func:`sample_seed` (cfg, s) — shared within a seed (paired samples),
independent between seeds, so an interval over seeds covers each seed's sampling noise. The samples (uint8) and their features are saved under
``data/runs/<profile>/{samples,features}/`` so that later notebooks form paired comparisons from files.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lib.measure import classifier, metrics

from lib import data, generate
from lib.infra.config import Config
from lib.factory import resolve_device, schedule_of
from lib.infra.paths import Paths


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
            self.net = classifier.get_classifier(cfg.data, cfg.eval, cache_dir=paths.base / "data" / "classifiers",
                                                 device=self.device, progress=progress)
            self.ref = classifier.features(self.net, data.to_model_range(images).to(self.device))
        else:  # FID against clean-fid's stored training-set statistics, KID against the training set's features
            from lib.infra import rehearsal
            from lib.measure import fid, reference

            self.fid, self.manifest = fid, rehearsal.of(cfg)
            mode = cfg.eval.fid_mode
            stats = fid.reference_stats(cfg.data.dataset, cfg.data.image_size, "train", mode, manifest=self.manifest)
            images, _ = data.load_images(replace(cfg.data, n_train=0))  # the whole training set, as the statistics
            feats = reference.reference_features(images, dataset=cfg.data.dataset, mode=mode,
                                                 cache_dir=paths.base / "data" / "inception", device=self.device,
                                                 manifest=self.manifest, progress=progress)
            self.ref = metrics.Reference(stats=stats, features=feats)
        self.name = "FD_clf" if self.metric == "classifier" else "FID"
        self.kid_ref = metrics.KIDToReference(self.ref)

    def features(self, x_model_range: torch.Tensor) -> np.ndarray:
        if self.metric == "classifier":
            return classifier.features(self.net, x_model_range.to(self.device))
        return self.fid.inception_features(data.from_model_range(x_model_range), mode=self.cfg.eval.fid_mode,
                                           device=self.device, manifest=self.manifest)

    def score(self, feats: np.ndarray, seed: int = 0) -> dict:
        """FD (bias-corrected percentile bootstrap over samples) and KID on the first ``eval.kid_samples``
        samples with its percentile bootstrap over them (``kid``, ``kid_lo``, ``kid_hi``)."""
        e = self.cfg.eval
        # The replicates on the evaluator's device: at D = 2,048 each is a few GFLOP, hours for a gpu sweep on one CPU thread.
        s = metrics.fd_bootstrap(feats, self.ref, n_boot=e.n_boot, level=e.ci_level, seed=seed, device=self.device)
        k = metrics.kid_bootstrap(feats[:e.kid_samples or None], None, n_boot=e.n_boot, level=e.ci_level, seed=seed,
                                  kid_ref=self.kid_ref)
        return {**s, "kid": k["value"], "kid_lo": k["lo"], "kid_hi": k["hi"]}


def metric_name(cfg: Config) -> str:
    return "FD_clf" if cfg.eval.metric == "classifier" else "FID"


#: Training seeds are this far apart in sample seed (a sample set of 06's set B uses sample.seed + 1).
SAMPLE_SEED_STRIDE = 1000


def sample_seed(cfg: Config, seed: int) -> int:
    """The seed of the initial noise x_T of every cell of training seed ``seed``:
    ``sample.seed + 1000·seed`` (training seed 0 keeps ``sample.seed``). Both arms and every method
    of one training seed share it (paired samples); different training seeds draw independent x_T."""
    return cfg.sample.seed + SAMPLE_SEED_STRIDE * int(seed)


def _cell_name(cfg: Config, arm: str, method: str, steps: int, seed: int) -> str:
    # The sample set (its size and seed) is part of the name, so notebooks that measure the same
    # (arm, sampler, steps) on other sample sets (06: fewer samples, sets A/B) never overwrite 04's;
    # training seed 0 keeps the name it had when there was one seed.
    run = arm if seed == 0 else f"{arm}-seed{seed}"
    return f"{run}__{method}__S{steps}__n{cfg.sample.n_samples}__seed{sample_seed(cfg, seed)}"


def features_path(paths: Paths, cfg: Config, arm: str, method: str, steps: int, seed: int = 0) -> Path:
    return paths.runs / "features" / f"{_cell_name(cfg, arm, method, steps, seed)}.npy"


def samples_path(paths: Paths, cfg: Config, arm: str, method: str, steps: int, seed: int = 0) -> Path:
    return paths.runs / "samples" / f"{_cell_name(cfg, arm, method, steps, seed)}.pt"


def load_features(paths: Paths, cfg: Config, arm: str, method: str, steps: int, seed: int = 0,
                  producer: str = "04_sampler_sweeps") -> np.ndarray:
    return read_array(paths.require(features_path(paths, cfg, arm, method, steps, seed), producer), producer)


def image_cell(ev: ImageEvaluator, eps_model, cfg: Config, arm: str, method: str, steps: int, *, seed: int = 0,
               grid=None, progress=True, label: str | None = None, **options) -> dict:
    """Generate ``sample.n_samples`` images for one cell of training seed ``seed`` from the x_T of
    :func:`sample_seed` (cfg, seed), save samples and features, score them (FD and KID, each with its
    bootstrap interval over the samples).

    ``label`` names the cell in files and tables (default: the method name), so a sampler with
    options (or a wrapped model) gets a name of its own."""
    label = label or method
    schedule = schedule_of(cfg)
    m = cfg.model
    info = {}
    x = generate.generate(eps_model, schedule, (m.in_channels, m.resolution, m.resolution), cfg.sample.n_samples,
                          method=method, num_steps=steps, profile_grid=grid or cfg.sample.grid,
                          batch_size=cfg.sample.batch_size, seed=sample_seed(cfg, seed), device=ev.device,
                          progress=progress, info=info, **options)
    generate.save_samples(x, samples_path(ev.paths, cfg, arm, label, steps, seed))
    # Score the images as they would be stored (uint8), as FID tools do.
    x = data.to_model_range(data.from_model_range(x))
    f = ev.features(x)
    p = features_path(ev.paths, cfg, arm, label, steps, seed)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, f)
    s = ev.score(f)
    return {"arm": arm, "seed": seed, "sample_seed": sample_seed(cfg, seed), "method": label, "steps": steps,
            "nfe": info["nfe"], ev.name: s["value"], "lo": s["lo"], "hi": s["hi"], "KID": s["kid"],
            "KID_lo": s["kid_lo"], "KID_hi": s["kid_hi"], "n": s["n"]}


def save_reference(ev: ImageEvaluator) -> Path:
    """The reference features (classifier) or (μ, Σ) (Inception) for notebook 05, as ``reference.npz``."""
    p = ev.paths.runs / "features" / "reference.npz"
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(ev.ref, metrics.Reference):  # Inception: FID's stored statistics and KID's features
        np.savez(p, mu=ev.ref.stats[0], sigma=ev.ref.stats[1], features=ev.ref.features)
    else:
        np.savez(p, features=ev.ref)
    return p


def read_array(path: Path, producer: str):
    """An .npy array, or an .npz's arrays as a dict, written by this project: no pickles are read, and
    a foreign, torn or garbage file is one line naming it and the notebook that writes it again."""
    try:
        obj = np.load(path, allow_pickle=False)
        if isinstance(obj, np.lib.npyio.NpzFile):
            with obj:
                return {k: obj[k] for k in obj.files}
        return obj
    except Exception as e:
        raise ValueError(f"{path} is not a readable array file written by this project ({type(e).__name__}); "
                         f"delete it and run notebook {producer} again") from None


def load_reference(paths: Paths):
    f = read_array(paths.require(paths.runs / "features" / "reference.npz", "04_sampler_sweeps"), "04_sampler_sweeps")
    if "features" in f and "mu" in f and "sigma" in f:
        return metrics.Reference(stats=(f["mu"], f["sigma"]), features=f["features"])
    if "features" in f:
        return f["features"]
    if "mu" in f and "sigma" in f:
        return f["mu"], f["sigma"]
    raise ValueError(f"{paths.runs / 'features' / 'reference.npz'} holds neither features nor mu/sigma; delete it "
                     f"and run notebook 04_sampler_sweeps again")
