"""Paired comparisons of two image cells from their saved features, per training seed and over seeds.

Within one training seed both cells' sample i start from the same x_T, so the sample bootstrap is
paired (lib.measure.metrics.compare_bootstrap); over seeds the per-seed differences are combined with a
paired t-interval (lib.measure.stats.seed_difference), which is what decides "better" or "worse".
A cell is named by (arm, label) and the config whose sample set it used (set A/B of notebook 06).
"""
from __future__ import annotations

from lib.measure import metrics, stats
from lib.infra.config import Config
from lib.experiment.evaluate import load_features
from lib.infra.paths import Paths


def compare_seed(paths: Paths, cfg: Config, a: tuple, b: tuple, steps: int, ref, seed: int = 0, *,
                 cfg_b: Config | None = None, producer: str = "04_sampler_sweeps") -> dict:
    """FD(a) − FD(b) of training seed ``seed`` (> 0: b better) with its paired sample bootstrap;
    ``a``, ``b`` are (arm, label); ``cfg_b`` the sample set of b if it differs from a's."""
    fa = load_features(paths, cfg, *a, steps, seed, producer)
    fb = load_features(paths, cfg_b or cfg, *b, steps, seed, producer)
    return metrics.compare_bootstrap(fa, fb, ref, n_boot=cfg.eval.n_boot, level=cfg.eval.ci_level, paired=True)


def compare_over_seeds(paths: Paths, cfg: Config, a: tuple, b: tuple, steps: int, ref, seeds, *,
                       cfg_b: Config | None = None, producer: str = "04_sampler_sweeps") -> dict:
    """:func:`compare_seed` for every training seed, combined by :func:`lib.measure.stats.seed_difference`."""
    per = [compare_seed(paths, cfg, a, b, steps, ref, s, cfg_b=cfg_b, producer=producer) for s in seeds]
    return {**stats.seed_difference(per, cfg.eval.ci_level), "seeds": list(seeds), "per_seed_boot": per}


def compare_arms(paths: Paths, cfg: Config, method: str, steps: int, a: str = "baseline", b: str = "s2dm",
                 ref=None, seeds=(0,)) -> dict:
    """Arm a against arm b under one sampler: :func:`compare_over_seeds` of (a, method) and (b, method)."""
    return compare_over_seeds(paths, cfg, (a, method), (b, method), steps, ref, seeds)


def interval_label(n_seeds: int, level: float) -> str:
    """How the arm-difference interval of a table was formed, for its title."""
    if n_seeds > 1:
        return f"{level:.0%} paired t-interval over {n_seeds} training seeds (of per-seed FD differences)"
    return f"{level:.0%} paired sample bootstrap of one training seed (seed-to-seed variation not included)"


def seed_rows(comparisons: dict, what: str = "") -> list[dict]:
    """Long format, one row per (comparison, seed): the per-seed difference and its sample bootstrap."""
    out = []
    for key, c in comparisons.items():
        for s, p in zip(c["seeds"], c["per_seed_boot"]):
            out.append({"comparison": what or " ".join(map(str, key if isinstance(key, tuple) else (key,))),
                        "seed": s, "a − b": p["diff"], "boot lo": p["diff_lo"], "boot hi": p["diff_hi"],
                        "rel %": 100 * p["rel"], "excludes 0 (this seed)": p["excludes_zero"]})
    return out
