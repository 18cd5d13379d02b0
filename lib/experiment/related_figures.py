"""Notebook 06's figures, each drawn from the tables the notebook has just saved (it saves the figures too).

Built from lib.experiment.plots' panels; the notebook keeps the tables, the sentences and the asserts.
"""
from __future__ import annotations

import numpy as np

from lib.experiment import plots


def shrinkage(rows, shrink, steps, metric: str, schedule, skips, tau: float):
    """The shrinkage test: the implied λ_t, DDIM's ``metric`` per step count for the baseline, the baseline
    under the implied scaling and S²-DM (set A, training seed 0), and the per-seed differences ``shrink``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(17, 3.8))
    plots.implied_lambda(ax[0], schedule, skips, tau)
    for j, (arm, lab) in enumerate([("baseline", "ddim"), ("baseline", "ddim+implied"), ("s2dm", "ddim")]):
        rs = [next(r for r in rows if r["arm"] == arm and r["method"] == lab and r["steps"] == S and r["seed"] == 0)
              for S in steps]
        plots.plot_interval(ax[1], np.arange(len(steps)) + 0.2 * (j - 1), rs, metric, linestyle="none",
                            label=f"{arm} {lab}")
    ax[1].set_xticks(range(len(steps)), [f"S={S}" for S in steps]); ax[1].set_ylabel(metric); ax[1].legend(fontsize=8)
    ax[1].set_title("DDIM, set A, training seed 0")
    plots.seed_lines(ax[2], [c["short"] for c in shrink], shrink)
    ax[2].set_ylabel(f"{metric} a − b"); ax[2].set_title("per training seed")
    return fig


def seed_differences(comps, metric: str):
    """Per-seed differences of S²-DM against the baseline and of CDM against its control, every sampler and S."""
    import matplotlib.pyplot as plt

    s2 = [c for c in comps if c["comparison"].startswith(("S²-DM vs baseline", "CDM vs control"))]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(s2) + 2), 3.8))
    plots.seed_lines(ax, [f"{c['comparison'].replace('S²-DM vs baseline under ', 'S²-DM ').replace('CDM vs control (same fine-tune, baseline loss) under ', 'CDM ')} S={c['steps']}" for c in s2], s2)
    ax.set_ylabel(f"{metric} a − b (> 0: S²-DM / CDM better)"); ax.set_title("per-seed differences: S²-DM vs baseline, CDM vs its control")
    return fig


def metric_vs_nfe(rows, arms, families, metric: str):
    """One panel per arm: ``metric`` against NFE for each sampler family (lib.experiment.plots.metric_vs_nfe)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, len(arms), figsize=(4.6 * len(arms), 3.8), sharey=True, squeeze=False)
    plots.metric_vs_nfe(ax[0], rows, arms, families, metric)
    return fig


def toy_vs_nfe(toy_rows, summary, toy_arms):
    """The toy's MMD² against NFE, one panel per method, each arm with its t-interval over seeds
    (``summary``: lib.measure.stats.summarize_toy of ``toy_rows``)."""
    import matplotlib.pyplot as plt

    methods_t = list(dict.fromkeys(r["method"] for r in toy_rows))
    fig, ax = plt.subplots(1, len(methods_t), figsize=(3.3 * len(methods_t), 3.4), sharey=True, squeeze=False)
    for j, m in enumerate(methods_t):
        rs = [r for r in summary if r["method"] == m]
        for arm in (a for a in toy_arms if a in rs[0]):
            plots.errorbars(ax[0, j], [r["nfe"] for r in rs], rs, arm, f"{arm}_lo", f"{arm}_hi", label=arm)
        ax[0, j].set_title(m); ax[0, j].set_xlabel("NFE")
    ax[0, 0].set_ylabel("toy MMD²"); ax[0, 0].legend(fontsize=8)
    return fig


def dose_response(dose_rows, metric: str):
    """Observed against predicted effect of each trained shrinker (S²-DM, IP) at each dose
    (lib.experiment.plots.predicted_observed): the toy's NLL and MMD², the images' KID and ``metric``."""
    import matplotlib.pyplot as plt

    panels = [(m, k) for m, k in (("toy", "nll"), ("toy", "mmd"), ("image", "KID"), ("image", metric))
              if any(r["model"] == m and r["metric"] == k for r in dose_rows)]
    fig, axs = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5), squeeze=False)
    for ax, (model, k) in zip(axs[0], panels):
        plots.predicted_observed(ax, [r for r in dose_rows if r["model"] == model and r["metric"] == k],
                                 f"{model} {'MMD²' if k == 'mmd' else k}, every sampler × steps; t-intervals over seeds")
    return fig
