"""Paired comparisons of two image cells from their saved features, per training seed and over seeds.

Within one training seed both cells' sample i start from the same x_T, so the sample bootstrap is
paired (lib.measure.metrics.compare_bootstrap; it covers the samples of that seed, its networks
fixed); different training seeds draw independent x_T (lib.experiment.evaluate.sample_seed), so the
paired t-interval over seeds of the per-seed differences (lib.measure.stats.seed_difference) covers
the seed-to-seed variation *and* each seed's sampling noise: that is what decides (notebook 05:
lib.experiment.tables.decisions). KID (unbiased) is compared beside FD on the same features.
A cell is named by (arm, label) and the config whose sample set it used (set A/B of notebook 06).
"""
from __future__ import annotations

from lib.measure import metrics, stats
from lib.factory import resolve_device
from lib.infra.config import Config
from lib.experiment.evaluate import load_features
from lib.infra.paths import Paths


def compare_seed(paths: Paths, cfg: Config, a: tuple, b: tuple, steps: int, ref, seed: int = 0, *,
                 cfg_b: Config | None = None, producer: str = "04_sampler_sweeps") -> dict:
    """FD(a) − FD(b) of training seed ``seed`` (> 0: b better) with its paired sample bootstrap;
    ``a``, ``b`` are (arm, label); ``cfg_b`` the sample set of b if it differs from a's."""
    fa = load_features(paths, cfg, *a, steps, seed, producer)
    fb = load_features(paths, cfg_b or cfg, *b, steps, seed, producer)
    c = metrics.compare_bootstrap(fa, fb, ref, n_boot=cfg.eval.n_boot, level=cfg.eval.ci_level, paired=True,
                                  device=resolve_device(cfg.train.device))  # replicates on the GPU where there is one
    kr = _kid_ref(ref)
    if kr is None:
        return {**c, "kid_a": float("nan"), "kid_b": float("nan"), "kid_diff": float("nan"), "kid_rel": float("nan")}
    k = cfg.eval.kid_samples or None  # KID on the cell's first kid_samples samples, as lib.experiment.evaluate scores it
    ka, kb = kr(fa[:k]), kr(fb[:k])
    return {**c, "kid_a": ka, "kid_b": kb, "kid_diff": ka - kb, "kid_rel": (ka - kb) / ka}


_KID_REFS: dict = {}


def _kid_ref(ref):
    """One lib.measure.metrics.KIDToReference per reference array (its kernel term costs ~0.4 s at 5,000
    classifier features, about a minute at 50,000 Inception features); None for a bare (μ, Σ)."""
    ref = metrics.kid_reference(ref)
    if ref is None:
        return None
    if id(ref) not in _KID_REFS:
        _KID_REFS.clear()
        _KID_REFS[id(ref)] = (ref, metrics.KIDToReference(ref))  # keep ref alive so its id stays its own
    return _KID_REFS[id(ref)][1]


def compare_over_seeds(paths: Paths, cfg: Config, a: tuple, b: tuple, steps: int, ref, seeds, *,
                       cfg_b: Config | None = None, producer: str = "04_sampler_sweeps") -> dict:
    """:func:`compare_seed` for every training seed, combined by :func:`lib.measure.stats.seed_difference`."""
    per = [compare_seed(paths, cfg, a, b, steps, ref, s, cfg_b=cfg_b, producer=producer) for s in seeds]
    return {**stats.seed_difference(per, cfg.eval.ci_level), "seeds": list(seeds), "per_seed_boot": per,
            "per_seed_rel": [c["rel"] for c in per], "per_seed_kid_rel": [c["kid_rel"] for c in per],
            "kid_a": float(sum(c["kid_a"] for c in per) / len(per)), "kid_b": float(sum(c["kid_b"] for c in per) / len(per))}


def compare_arms(paths: Paths, cfg: Config, method: str, steps: int, a: str = "baseline", b: str = "s2dm",
                 ref=None, seeds=(0,)) -> dict:
    """Arm a against arm b under one sampler: :func:`compare_over_seeds` of (a, method) and (b, method)."""
    return compare_over_seeds(paths, cfg, (a, method), (b, method), steps, ref, seeds)


def interval_label(n_seeds: int, level: float) -> str:
    """How the arm-difference interval of a table was formed, for its title."""
    if n_seeds > 1:
        return (f"{level:.0%} paired t-interval over {n_seeds} training seeds of the per-seed differences "
                "(covers seed-to-seed variation and each seed's sampling noise: independent x_T per seed)")
    return f"{level:.0%} paired sample bootstrap of one training seed (its samples only; seed-to-seed variation not included)"


def seed_rows(comparisons: dict, what: str = "") -> list[dict]:
    """Long format, one row per (comparison, seed): the per-seed FD difference with its paired sample
    bootstrap (that seed's samples only) and the per-seed KID difference."""
    out = []
    for key, c in comparisons.items():
        for s, p in zip(c["seeds"], c["per_seed_boot"]):
            out.append({"comparison": what or " ".join(map(str, key if isinstance(key, tuple) else (key,))),
                        "seed": s, "a − b": p["diff"], "boot lo": p["diff_lo"], "boot hi": p["diff_hi"],
                        "rel %": 100 * p["rel"], "excludes 0 (this seed)": p["excludes_zero"],
                        "KID a − b": p.get("kid_diff", float("nan")), "KID rel %": 100 * p.get("kid_rel", float("nan"))})
    return out


COMPARISON_COLUMNS = ("comparison", "a", "b", "steps", "a − b", "lo", "hi", "rel %", "excludes 0", "n_seeds",
                      "boot lo", "boot hi")


def comparison_columns(metric: str) -> list[str]:
    """The columns of a comparison table (notebook 06); the per-seed list stays out of the files."""
    c = list(COMPARISON_COLUMNS)
    return c[:4] + [f"{metric} a", f"{metric} b"] + c[4:]
