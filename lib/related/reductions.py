"""Each neighbouring method reduces exactly to its baseline at its trivial setting, checked on a trained model.

Time-Shift with cutoff T is DDIM, TS-PNDM with window 0 is PNDM, Restart with k = 0 is Heun, Skip-Tuning
with ρ = 1 and a constant ε scaling λ = 1 are the plain DDIM, and Skip-Tuning leaves no hook behind. The
unit tests check each on small models; notebook 06 checks them again on the models it compares.
"""
from __future__ import annotations

import torch

from lib import generate, samplers
from lib.factory import schedule_of
from lib.infra.config import Config
from lib.related import epsscale, skiptuning


def reductions(model, cfg: Config, S: int, grid) -> dict:
    """Each neighbour at its trivial setting against its baseline sampler on ``model``, 8 samples of
    the profile's shape: {check: bit-identical}. Time-Shift with cutoff T is DDIM, TS-PNDM with
    window 0 is PNDM, Restart with k = 0 is Heun, Skip-Tuning with ρ = 1 and a constant ε scaling
    λ = 1 are the plain DDIM; Skip-Tuning leaves no hook behind."""
    sch = schedule_of(cfg)
    xT = generate.initial_noise((cfg.model.in_channels, cfg.model.resolution, cfg.model.resolution), 0, 8,
                                cfg.sample.seed)

    def run(m, method, **kw):  # the stochastic samplers draw from one generator seed on both sides
        return samplers.sample(m, xT, sch, S, method, profile_grid=grid, generator=torch.Generator().manual_seed(0), **kw)
    out = {f"{a} {kw} = {b}": torch.equal(run(model, a, **kw), run(model, b))
           for a, kw, b in (("ts-ddim", dict(cutoff=cfg.diffusion.T), "ddim"), ("ts-pndm", dict(window=0), "pndm"),
                            ("restart", dict(k=0), "heun"))}
    ddim0 = samplers.sample(model, xT, sch, S, "ddim", grid=grid)
    out["skip-tuning rho 1 = ddim"] = torch.equal(samplers.sample(skiptuning.SkipTuned(model, 1.0, 1.0), xT, sch, S,
                                                                  "ddim", grid=grid), ddim0)
    out["eps scaling lambda 1 = ddim"] = torch.equal(
        samplers.sample(epsscale.EpsScaled(model, epsscale.Constant(1.0)), xT, sch, S, "ddim", grid=grid), ddim0)
    out["skip-tuning leaves no hook"] = not any(b._forward_pre_hooks for b in skiptuning.decoder_blocks(model))
    return out
