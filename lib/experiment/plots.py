"""Small figure helpers the notebooks share (they define no functions themselves)."""
from __future__ import annotations

import numpy as np
import torch

# Method and arm names as the text writes them (the code's keys stay lower case). The one place figures
# take their labels from: F-PNDM is the code's "pndm", S-PNDM its "spndm" (PNDM paper, Liu et al. 2022).
LABELS = {"ddim": "DDIM", "ddpm": "DDPM", "pndm": "F-PNDM", "spndm": "S-PNDM", "deis": "DEIS",
          "ts-ddim": "TS-DDIM", "ts-pndm": "TS-F-PNDM", "heun": "Heun", "restart": "Restart",
          "baseline": "baseline", "s2dm": "S²-DM", "cdm": "CDM", "baseline-ft": "baseline fine-tune",
          "implied": "implied λ", "uniform": "uniform", "quad": "quad"}


def label(name: str) -> str:
    """The display name of a method or arm key; compound keys (``ddim+implied``, ``ddim@uniform``) part by part."""
    for sep, shown in (("+", " + "), ("@", " @ ")):
        if sep in name:
            return shown.join(label(p) for p in name.split(sep))
    return LABELS.get(name, name)


def arm_style(i: int) -> dict:
    """Arm ``i``'s look: colour, marker and line style all differ, so overlapping arms stay visible."""
    return dict(color=f"C{i}", marker="os^D"[i % 4], linestyle=("-", "--", ":", "-.")[i % 4],
                markerfacecolor="none" if i % 2 else None)


def dodge(x, i: int, n: int, step: float = 1.04):
    """``x`` shifted for series ``i`` of ``n`` on a log axis (a factor ``step`` apart), so equal values
    side by side do not hide each other."""
    return [v * step ** (i - (n - 1) / 2) for v in x]


def log_ticks(ax, values):
    """A log x axis ticked at ``values`` in plain numbers (matplotlib's 2×10¹ labels collide)."""
    from matplotlib.ticker import NullLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.set_xticks(sorted(set(values)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def seed_legend(ax, arms, n_seeds: int, bars: str, **kw):
    """A legend that says what the faded lines and the bars are: per arm its colour; seed 0 drawn solid,
    the other training seeds faded; the bars' interval in words."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], **{k: v for k, v in arm_style(i).items() if k != "linestyle"}, label=label(a))
               for i, a in enumerate(arms)]
    handles.append(Line2D([], [], color="0.3", label="training seed 0"))
    if n_seeds > 1:
        rest = "seed 1" if n_seeds == 2 else f"seeds 1–{n_seeds - 1}"
        handles.append(Line2D([], [], color="0.3", alpha=0.4, label=f"training {rest} (faded)"))
    handles.append(Line2D([], [], color="0.3", marker="|", linestyle="none", markersize=10, label=f"bars: {bars}"))
    return ax.legend(handles=handles, **{"fontsize": 7, **kw})


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
    return ax.errorbar(x, y, yerr=yerr, **{"marker": "o", "capsize": 3, **kw})


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
