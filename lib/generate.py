"""Sample sets from a trained run: batched, seeded per sample index, shardable across processes.

The initial noise x_T of sample i depends only on (seed, i), and a stochastic sampler's noise only
on (seed, batch index), so the same sample set comes out on one process or on several (each rank
takes every world-th batch, then the batches are gathered), and both arms of a comparison start
from the very same x_T (a paired comparison).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from lib import checkpoint as ckpt
from lib import samplers

CHUNK = 1000  # x_T is drawn in chunks of this many samples, chunk k from its own seed


def initial_noise(shape, start: int, stop: int, seed: int) -> torch.Tensor:
    """x_T for samples ``start..stop-1`` (float32, CPU): the same values whatever the batching."""
    out = []
    for k in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        chunk = torch.randn((CHUNK, *shape), generator=g)
        lo, hi = max(start - k * CHUNK, 0), min(stop - k * CHUNK, CHUNK)
        out.append(chunk[lo:hi])
    return torch.cat(out)


def load_model(run_dir, device="cpu"):
    """The EMA ε-model of a finished run (``final.pt``) in eval mode, and its config."""
    from lib.train import build_model

    cfg, state = ckpt.load_run(run_dir, map_location="cpu")
    model = build_model(cfg.model)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


@torch.no_grad()
def generate(eps_model, schedule, shape, n: int, *, method: str = "ddim", num_steps: int = 10,
             grid: str = "uniform", batch_size: int = 500, seed: int = 0, device="cpu", progress: bool = True,
             info: dict | None = None, **options) -> torch.Tensor:
    """``n`` samples (float32 in model range, CPU) from ``eps_model`` with a sampler of lib.samplers.

    Under torch.distributed each rank computes its share of the batches; all ranks return the full
    set. ``info`` receives the NFE per sample and the number of samples refused as non-finite."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    n_batches = (n + batch_size - 1) // batch_size
    mine = list(range(rank, n_batches, world))
    parts, nfe = {}, None
    for b in tqdm(mine, desc=f"{method} S={num_steps}", disable=not progress or rank != 0, leave=False):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        x_T = initial_noise(shape, lo, hi, seed).to(device)
        g = torch.Generator(device=device).manual_seed(seed * 7919 + b)
        run_info = {}
        x0 = samplers.sample(eps_model, x_T, schedule, num_steps, method, grid=grid, generator=g,
                             info=run_info, **options)
        nfe = run_info.get("nfe", nfe)
        parts[b] = x0.float().cpu()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, parts)
        parts = {k: v for d in gathered for k, v in d.items()}
    x = torch.cat([parts[b] for b in range(n_batches)])
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if info is not None:
        info.update(nfe=nfe, n=n, non_finite=int(bad.sum()))
    if bool(bad.any()):
        raise FloatingPointError(f"{int(bad.sum())} of {n} samples ({method}, {num_steps} steps) are not finite; "
                                 f"refusing to return them. The model or sampler settings are broken.")
    return x


def save_samples(x: torch.Tensor, path) -> Path:
    """Store a sample set as uint8 (what an image file would hold), atomically."""
    from lib.data import from_model_range

    return ckpt.atomic_save(from_model_range(x) if x.dtype != torch.uint8 else x, path)
