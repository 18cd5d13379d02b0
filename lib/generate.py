"""Sample sets from a trained run: batched, seeded per sample index, shardable across processes.

The initial noise x_T of sample i depends only on (seed, i), and a stochastic sampler's noise only
on (seed, batch index), so the same sample set comes out on one process or on several (each rank
takes every world-th batch, then the batches are gathered), and both arms of a comparison start
from the very same x_T (a paired comparison).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from lib.infra.progress import tqdm

from lib.infra import checkpoint as ckpt
from lib.infra import distributed, rundir
from lib import samplers
from lib.transfer import GRIDS

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
    from lib.factory import build_model

    cfg, state = rundir.load_run(run_dir, map_location="cpu")
    model = build_model(cfg.model)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


@torch.no_grad()
def generate(eps_model, schedule, shape, n: int, *, method: str = "ddim", num_steps: int = 10,
             grid: str | None = None, profile_grid: str | None = None, batch_size: int = 500, seed: int = 0, device="cpu", progress: bool = True,
             info: dict | None = None, **options) -> torch.Tensor:
    """``n`` samples (float32 in model range, CPU) from ``eps_model`` with a sampler of lib.samplers.

    Under torch.distributed each rank computes its share of the batches; all ranks return the full
    set. ``grid`` and ``profile_grid`` as in ``lib.samplers.sample`` (None and None: the method's own
    grid). ``info`` receives the NFE per sample and the number of samples refused as non-finite."""
    ctx = distributed.current(device)
    n_batches = (n + batch_size - 1) // batch_size
    mine = list(range(ctx.rank, n_batches, ctx.world))
    parts, nfe = {}, None
    for b in tqdm(mine, desc=f"{method} S={num_steps}", disable=not progress or not ctx.main, leave=False):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        x_T = initial_noise(shape, lo, hi, seed).to(device)
        # A CPU generator: samplers draw their noise on it and move it (lib.transfer.noise_like), so a
        # stochastic sampler (DDPM, Restart's churn) gives the same samples on every device.
        g = torch.Generator().manual_seed(seed * 7919 + b)
        run_info = {}
        x0 = samplers.sample(eps_model, x_T, schedule, num_steps, method, grid=grid, profile_grid=profile_grid,
                             generator=g, info=run_info, **options)
        nfe = run_info.get("nfe", nfe)
        parts[b] = x0.float().cpu()
    if ctx.world > 1:
        parts = {k: v for d in ctx.gather(parts) for k, v in d.items()}
    x = torch.cat([parts[b] for b in range(n_batches)])
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if info is not None:
        info.update(nfe=nfe, n=n, non_finite=int(bad.sum()))
    if bool(bad.any()):
        raise FloatingPointError(f"{int(bad.sum())} of {n} samples ({method}, {num_steps} steps) are not finite; "
                                 f"refusing to return them. The model or sampler settings are broken.")
    return x


def check_destination(path, need: int = 0) -> Path:
    """Fail before sampling (not after minutes of it) if ``path`` cannot be written: a directory, an
    unwritable folder, a parent that is a file, a disk without ``need`` bytes free."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory; give a file name such as {path / 'samples.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise ValueError(f"--out {path} cannot be written ({e.strerror or e}: {e.filename or path.parent}); "
                         f"choose a writable location") from None
    ckpt.check_free_space(path.parent, need, f"the samples {path}")
    return path


def save_samples(x: torch.Tensor, path) -> Path:
    """Store a sample set as uint8 (what an image file would hold), atomically."""
    from lib.data import from_model_range

    return ckpt.atomic_save(from_model_range(x) if x.dtype != torch.uint8 else x, path)


def rescue(write, out) -> Path | None:
    """Keep finished samples whose destination could not be written: ``write(path)`` into the system's
    temporary folder (another disk, often) under ``out``'s name; the path, or None if that fails too."""
    import tempfile

    try:
        return write(Path(tempfile.gettempdir()) / f"s2dm-rescued-{os.getpid()}-{Path(out).name}")
    except (OSError, RuntimeError):
        return None


# ---------------------------------------------------------------------------- command line
def _option_value(value: str, default):
    """A sampler option from the command line, typed like the option's default (eta=0.5, ab_order=2)."""
    if isinstance(default, bool):
        if value.lower() not in ("true", "1", "yes", "false", "0", "no"):
            raise ValueError(f"expected a boolean (true/false), got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def _parse_options(method: str, items) -> dict:
    """``["eta=0.5", ...]`` -> ``{"eta": 0.5}``; unknown methods and options fail with the valid names."""
    spec = samplers.METHODS.get(method)
    if spec is None:
        raise ValueError(f"unknown sampling method {method!r}; valid methods: {', '.join(samplers.METHODS)}")
    opts = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r} must look like option=value (e.g. --set eta=0.5)")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in spec.options:
            raise ValueError(f"unknown option {k!r} for method {method!r}; valid options: "
                             f"{', '.join(spec.options) or 'none'}")
        try:
            opts[k] = _option_value(v, spec.options[k])
        except ValueError as e:
            raise ValueError(f"--set {k}: {e}") from None
    return opts


def _join(device_name: str) -> distributed.RunContext:
    """This process's run context for ``--device`` (auto: CUDA when available), under torchrun too."""
    cuda = torch.cuda.is_available() if device_name == "auto" else device_name == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available; use --device cpu or auto")
    return distributed.join(torch.device("cuda" if cuda else "cpu"))


def argparser():
    """The command line of :func:`main`."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m lib.generate",
        description="Generate a sample set from a trained run's EMA weights (final.pt); under torchrun the "
                    "batches are shared among the processes and rank 0 writes the file. Images are stored as "
                    "uint8 [N, C, H, W], 2-D toy samples as float32 [N, 2].")
    # Long names that are no prefix of a torchrun option: torchrun's own parser would claim an
    # abbreviation such as --run (--run-path) or --n (--nnodes, ...) even after the module name.
    p.add_argument("--run-dir", dest="run", required=True,
                   help="run directory written by lib.train (config.json + final.pt)")
    p.add_argument("--out", required=True, help="output file (.pt), written atomically by rank 0")
    p.add_argument("--method", default="ddim", help=f"sampler: {', '.join(samplers.METHODS)}")
    p.add_argument("--steps", type=int, default=10, help="number of sampling steps S")
    p.add_argument("--grid", default=None, help=f"{' | '.join(GRIDS)} (default: the run's sample.grid where the "
                                                 "method runs on it, else the method's own)")
    p.add_argument("-n", "--num-samples", dest="n", type=int, default=None,
                   help="number of samples (default: the run's sample.n_samples)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's sample.batch_size")
    p.add_argument("--seed", type=int, default=None, help="default: the run's sample.seed")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--set", dest="options", action="append", default=[], metavar="OPTION=VALUE",
                   help="sampler option, e.g. --set eta=0.5 (ddim) or --set ab_order=2 (deis); repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    """A sample set from a run's EMA model; one process, or several under torchrun::

        python -m lib.generate --run-dir DIR --out FILE.pt [--method ddim --steps 10 --grid uniform
                               --num-samples N --batch-size B --seed S --set eta=0.5 ...]
        torchrun --nproc_per_node=8 -m lib.generate --run-dir DIR --out FILE.pt ...

    Returns the exit status (2 with an ``error:`` line for a missing run or bad options)."""
    import sys
    import time

    from lib.infra.config import ConfigError
    from lib.factory import schedule_of

    a = argparser().parse_args(argv)
    ctx = distributed.RunContext()
    try:
        options = _parse_options(a.method, a.options)  # fail before loading anything
        check_destination(a.out)  # ... and before sampling for minutes into a place that cannot take it
        for name, v in (("--num-samples", a.n), ("--batch-size", a.batch_size)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v}")
        ctx = _join(a.device)
        model, cfg = load_model(a.run, ctx.device)
        s = cfg.sample
        n = a.n or s.n_samples
        schedule = schedule_of(cfg)
        # the run's sample.grid where the method runs on it (Heun/Restart keep EDM's grid); --grid is checked
        grid = samplers.METHODS[a.method].grid(a.grid, s.grid)
        samplers.nfe(a.method, a.steps, grid, schedule, **options)  # validates steps and grid up front
        m = cfg.model
        shape = (m.in_channels,) if m.kind == "mlp" else (m.in_channels, m.resolution, m.resolution)
        # the file is known before sampling: refuse a disk that cannot take it (uint8 images, float32 toy points)
        check_destination(a.out, need=n * (4 if m.kind == "mlp" else 1) * int(torch.Size(shape).numel()) + (1 << 20))
        info, t0 = {}, time.perf_counter()
        x = generate(model, schedule, shape, n, method=a.method, num_steps=a.steps, grid=grid,
                     batch_size=a.batch_size or s.batch_size, seed=s.seed if a.seed is None else a.seed,
                     device=ctx.device, progress=not a.quiet, info=info, **options)
    except (FileNotFoundError, ValueError, ConfigError, ckpt.CheckpointError, FloatingPointError, rundir.RunDirError,
            ckpt.DiskFull) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ctx.main:
        write = (lambda p: save_samples(x, p)) if m.kind != "mlp" else (lambda p: ckpt.atomic_save(x.float(), p))
        try:
            path = write(a.out)
        except (ckpt.DiskFull, OSError) as e:  # the disk filled while sampling: keep the finished samples
            kept = rescue(write, a.out)
            print((f"error: {e}" if isinstance(e, ckpt.DiskFull) else
                   f"error: {a.out} cannot be written ({e.strerror or e})") +
                  (f"; the {n} finished samples are kept in {kept}: move them to {a.out} once there is room"
                   if kept else "; choose another --out and run the same command again (the samples are "
                   "seeded: the same set comes out)"), file=sys.stderr)
            return 2
        print(f"{n} samples ({a.method}, S={a.steps}, {grid}, NFE {info['nfe']}/sample, {ctx.world} process(es), "
              f"{time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        print(path)
    distributed.leave()  # no rank exits (and tears the group down) before rank 0 has written the file
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
