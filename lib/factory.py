"""The factories every entry point shares: the ε-network, the schedule and the device of a config.

Kept apart from lib.train so that sampling and evaluation code (lib.generate, lib.experiment.sweep, the
notebooks) build models without importing the training loop."""
from __future__ import annotations

import torch

from lib.infra.config import Config, ConfigError
from lib.schedule import Schedule, linear_schedule

__all__ = ["build_model", "schedule_of", "resolve_device"]


def build_model(model_cfg) -> torch.nn.Module:
    """The ε-network of a ``model`` config section: the DDPM UNet or the 2-D toy MLP."""
    if model_cfg.kind == "mlp":
        from lib.mlp import build_mlp
        return build_mlp(model_cfg)
    from lib.unet import build_unet
    return build_unet(model_cfg)


def schedule_of(cfg: Config) -> Schedule:
    """The linear-β schedule of a config's ``diffusion`` section."""
    d = cfg.diffusion
    return linear_schedule(d.T, d.beta_start, d.beta_end)


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a ConfigError naming the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(name)
