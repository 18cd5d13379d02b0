"""The two training-side shrinkers of the dose–response test, their doses and the ε scalings they imply.

* S²-DM at loss strength (skip, τ): λ_t = (τ + (1−τ)c_t²)/τ, exact for any data (docs/method.md §1).
* DDPM-IP at perturbation γ: λ_t = 1 + γ²(1−ᾱ_t)/(ᾱ_t σ² + 1 − ᾱ_t) for isotropic Gaussian data of
  per-coordinate variance σ² (docs/method.md §1b), σ² measured on the training data of each model (the
  images' pixels in [-1, 1]; the toy mixture's exact covariance).

The IP doses of a profile: γ *matched* to the S²-DM setting ``experiment.dose_ip_match`` (equal mean
λ_t − 1 over the DDIM-10 grid, per model because σ² differs; rounded to 4 significant digits, which is
also its run name) and the fixed ``experiment.dose_ip_gamma`` (0.1: DDPM-IP's published default).
"""
from __future__ import annotations

import functools
import math

import torch

from lib import data, samplers
from lib.factory import schedule_of
from lib.infra.config import Config, toy_config
from lib.related import epsscale

MODELS = ("image", "toy")
MATCH_STEPS = 10  # the dose is matched on the DDIM-10 grid


def implied_lambda(schedule, skip: int, tau: float, t) -> torch.Tensor:
    """S²-DM's λ_t = (τ + (1−τ)c_t²)/τ (1 for t < skip), float64: 1 / Schedule.shrinkage (docs/method.md §1)."""
    return epsscale.implied_s2dm(schedule, skip, tau)(torch.as_tensor(t, dtype=torch.float64))


def model_config(cfg: Config, model: str) -> Config:
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return toy_config(cfg) if model == "toy" else cfg


@functools.lru_cache(maxsize=16)
def _image_variance(data_cfg) -> float:
    images, _ = data.load_images(data_cfg)
    x = data.to_model_range(images).to(torch.float64)
    return float(x.var(dim=0, unbiased=False).mean())


def data_variance(cfg: Config, model: str) -> float:
    """σ²: the mean over coordinates of the training data's per-coordinate variance (the model's range).
    The images' σ² reads the training set (raises lib.readers.DatasetMissing where it is not in place)."""
    mc = model_config(cfg, model)
    if model == "toy":
        return float(torch.diagonal(data.toy_distribution(mc.data.dataset).cov()).to(torch.float64).mean())
    return _image_variance(mc.data)


def ddim_grid(cfg: Config, steps: int) -> torch.Tensor:
    sch = schedule_of(cfg)
    return sch.timesteps(steps, samplers.grid_for("ddim", cfg.sample.grid)).to(torch.float64)


def ip_lambda(cfg: Config, model: str, gamma: float, variance: float | None = None) -> epsscale.ImpliedIP:
    mc = model_config(cfg, model)
    return epsscale.implied_ip(schedule_of(mc), gamma, data_variance(cfg, model) if variance is None else variance)


def matched_gamma(cfg: Config, model: str, variance: float | None = None) -> float | None:
    """γ with mean_t λ_t^IP − 1 = mean_t λ_t^S²DM − 1 over the DDIM-10 grid at the S²-DM setting
    ``experiment.dose_ip_match`` (None where it is −1), to 4 significant digits; ``variance`` replaces the
    measured σ² (the preflight counts runs before the data is in place)."""
    i = cfg.experiment.dose_ip_match
    if i < 0:
        return None
    mc = model_config(cfg, model)
    skip, tau = cfg.experiment.dose_skip[i], cfg.experiment.dose_tau[i]
    grid = ddim_grid(mc, MATCH_STEPS)
    target = float((implied_lambda(schedule_of(mc), skip, tau, grid) - 1).mean())
    per_unit = float((ip_lambda(cfg, model, 1.0, variance)(grid) - 1).mean())  # λ − 1 is γ² times this
    return float(f"{math.sqrt(target / per_unit):.4g}")


def ip_doses(cfg: Config, model: str) -> list[float]:
    """The IP doses of ``model``: the matched γ first (where declared), then ``experiment.dose_ip_gamma``."""
    m = matched_gamma(cfg, model)
    return list(dict.fromkeys(([m] if m is not None else []) + [float(g) for g in cfg.experiment.dose_ip_gamma]))


def ip_image_doses(cfg: Config, variance: float | None = None) -> list[float]:
    """The IP doses that also train as images: the matched one (the budget; the toy runs every dose)."""
    m = matched_gamma(cfg, "image", variance)
    return [m] if m is not None else []


def ip_arm(gamma: float) -> str:
    """The run name of DDPM-IP at γ (its arm is ``ip`` with ``loss.gamma = γ``)."""
    return f"ip-g{gamma:.4g}"
