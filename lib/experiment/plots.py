"""Small figure helpers the notebooks share (they define no functions themselves)."""
from __future__ import annotations

import numpy as np
import torch


def sample_grid(x: torch.Tensor, nrow: int = 8):
    """A [H', W'] or [H', W', 3] numpy image of the first nrow² samples (model range in, [0, 1] out)."""
    import torchvision

    g = torchvision.utils.make_grid(x[: nrow * nrow].float().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=1)
    g = g.permute(1, 2, 0).numpy()
    return g[..., 0] if g.shape[-1] == 1 or (g[..., 0] == g[..., 1]).all() else g


def load_sample_grid(path, nrow: int = 8):
    """:func:`sample_grid` of a stored uint8 sample set (lib.generate.save_samples)."""
    return sample_grid(torch.load(path, weights_only=True).float() / 127.5 - 1, nrow)


def plot_interval(ax, x, rows, key, lo="lo", hi="hi", **kw):
    """Points with their intervals as bars. A percentile interval of FD need not contain the FD of all
    samples (resampling with replacement biases FD upwards), so the bars are drawn from lo to hi."""
    line, = ax.plot(x, [r[key] for r in rows], marker="o", **kw)
    ax.vlines(x, [r[lo] for r in rows], [r[hi] for r in rows], color=line.get_color(), alpha=0.6)
    return line


def errorbars(ax, x, rows, key, lo, hi, **kw):
    """``ax.errorbar`` from a point and its interval bounds (clipped at 0 length)."""
    y = np.array([r[key] for r in rows], dtype=float)
    yerr = [np.maximum(0, y - [r[lo] for r in rows]), np.maximum(0, np.array([r[hi] for r in rows]) - y)]
    return ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, **kw)


def seed_lines(ax, labels, comparisons, scale: float = 1.0, key: str = "per_seed"):
    """The per-seed arm differences, one line per training seed across the cells ``labels`` (same order
    as ``comparisons``), with the mean over seeds and its seed-level interval as black bars."""
    comps = list(comparisons)
    x = np.arange(len(comps))
    n = max(len(c[key]) for c in comps)
    for s in range(n):
        ax.plot(x, [scale * c[key][s] if s < len(c[key]) else np.nan for c in comps], marker="o", alpha=0.75,
                label=f"seed {s}")
    m = np.array([scale * c["diff"] for c in comps])
    ax.errorbar(x, m, yerr=[m - [scale * c["diff_lo"] for c in comps], [scale * c["diff_hi"] for c in comps] - m],
                fmt="s", color="k", capsize=4, label="mean, seed-level interval")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.legend(fontsize=8)
