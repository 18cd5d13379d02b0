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


def forest(ax, labels, rows, per_seed: dict, claim, margin: float, measure: str, one_seed: bool = False):
    """The improvement forest of notebook 05: per cell the mean relative improvement (%) with its interval
    (``rows``: dicts with "improvement %", "lo", "hi", in the order of ``labels``), each training seed's
    value (``per_seed``: {cell: [% per seed]}, same order), the paper's claimed range and ±``margin``."""
    y = np.arange(len(labels))
    rel = np.array([[r["improvement %"], r["lo"], r["hi"]] for r in rows])
    ax.axvspan(*claim, color="C2", alpha=0.2, label="paper's claimed range")
    ax.axvline(0, color="k", lw=0.8)
    ax.errorbar(rel[:, 0], y, xerr=[rel[:, 0] - rel[:, 1], rel[:, 2] - rel[:, 0]], fmt="o", capsize=3,
                label="ours, mean over seeds" + (" (bootstrap)" if one_seed else " (paired t over seeds)"))
    n_seeds = max((len(v) for v in per_seed.values()), default=0)
    for k in range(n_seeds):
        ax.plot([v[k] if k < len(v) else np.nan for v in per_seed.values()], y, ".", color="C1", alpha=0.6,
                label="each training seed" if k == 0 else None)
    ax.axvline(-margin, color="C3", ls=":", lw=1, label=f"±{margin} % (TOST margin)")
    ax.axvline(margin, color="C3", ls=":", lw=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"relative improvement of {measure} (%), > 0: S²-DM better")
    ax.legend(loc="lower right", fontsize=8)


def dose_label(r) -> str:
    """A dose row's series name: S²-DM at (skip, τ) or IP at γ."""
    return f"S²-DM skip {r['skip']}, τ {r['tau']:g}" if r.get("arm", "s2dm") == "s2dm" else f"IP γ {r['gamma']:g}"


def predicted_observed(ax, rows, title: str):
    """The dose–response plot of notebook 06: per cell observed (trained arm − baseline) against predicted
    (baseline ÷ implied λ_t − baseline) with both t-intervals, one series per dose (S²-DM's (skip, τ), IP's γ;
    squares for IP), and the identity line (the shrinkage explanation holds where the points sit on it)."""
    for name in dict.fromkeys(dose_label(r) for r in rows):
        g = [r for r in rows if dose_label(r) == name]
        x, y = (np.array([r[key] for r in g], dtype=float) for key in ("predicted", "observed"))
        err = {key: [np.nan_to_num(np.maximum(0, v - np.array([r[f"{key}_lo"] for r in g], dtype=float))),
                     np.nan_to_num(np.maximum(0, np.array([r[f"{key}_hi"] for r in g], dtype=float) - v))]
               for key, v in (("predicted", x), ("observed", y))}
        ax.errorbar(x, y, xerr=err["predicted"], yerr=err["observed"], marker="s" if name.startswith("IP") else "o",
                    linestyle="none", capsize=2, label=name)
    if rows:
        lim = [np.nanmin([r[k] for r in rows for k in ("predicted", "observed", "predicted_lo", "observed_lo")]),
               np.nanmax([r[k] for r in rows for k in ("predicted", "observed", "predicted_hi", "observed_hi")])]
        ax.plot(lim, lim, "k--", lw=1, label="observed = predicted")
    ax.set_xlabel("predicted: baseline ÷ implied λ_t − baseline")
    ax.set_ylabel("observed: trained arm − baseline")
    ax.set_title(title)
    ax.legend(fontsize=7)


def metric_vs_nfe(axes, rows, arms, labels, metric: str, seed: int = 0):
    """One panel per arm: ``metric`` against NFE for each sampler family in ``labels`` (rows of training
    seed ``seed``), with each cell's interval."""
    for ax, arm in zip(axes, arms):
        for lab in labels:
            rs = sorted((r for r in rows if r["arm"] == arm and r["method"] == lab and r["seed"] == seed),
                        key=lambda r: r["nfe"])
            plot_interval(ax, [r["nfe"] for r in rs], rs, metric, label=lab)
        ax.set_xlabel("NFE")
        ax.set_title(f"{arm} (set A, training seed {seed})")
    axes[0].set_ylabel(metric)
    axes[-1].legend(fontsize=8)


def implied_lambda(ax, schedule, skips, tau: float):
    """λ_t = (τ + (1−τ)c_t²)/τ, the ε scaling S²-DM's loss implies (docs/method.md §1), for each skip."""
    from lib.related import epsscale

    t = torch.arange(schedule.T, dtype=torch.float64)
    for skip in skips:
        ax.plot(t, epsscale.implied_s2dm(schedule, skip, tau)(t), label=f"skip {skip}, τ {tau}")
    ax.set_xlabel("t")
    ax.set_ylabel("implied λ_t")
    ax.legend()
    ax.set_title("the ε scaling S²-DM's loss implies")
