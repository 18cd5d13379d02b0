"""Sampler overhead: wall time of a full sampling run divided by the time of its network evaluations.

    .venv/bin/python bench/sampler_overhead.py                 # cpu profile UNet, batch 256, S = 20
    .venv/bin/python bench/sampler_overhead.py --steps 20 --repeats 3 --methods ddim,pndm

For every sampler and repeat it times
  * ``total``: the wall time of ``samplers.sample(...)`` (NFE network calls plus the sampler's own work);
  * ``alone``: the network by itself for the same NFE calls (same shape, same t). Each alone call runs
    right after the sampler's call it mirrors, so the two see the same load on a shared machine (timing
    them minutes apart measured mostly the neighbours' jobs); its time is subtracted from the wall time;
  * ``inline``: the time spent inside the network during the run.
ratio = total/alone (the brief's number) and inline ratio = total/inline, medians over repeats.
Target: <= 1.05. Results go to bench/results/sampler_overhead_<device>.json and .md, with the
machine, torch version, threads, date and the command line.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import cpu_model  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib import samplers  # noqa: E402
from lib.infra.config import get_config  # noqa: E402
from lib.schedule import linear_schedule  # noqa: E402
from lib.unet import build_unet  # noqa: E402

TARGET = 1.05


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PairedModel:
    """Wraps the ε-model: each sampler call is timed, and is followed at once by one more call of the
    network alone (same shape, same t, a fixed input) that is timed separately. The pairs see the same
    machine load, which keeps the comparison fair on a shared machine; the extra calls' time is
    subtracted from the run's wall time."""

    def __init__(self, model, device, x_alone):
        self.model, self.device, self.x_alone = model, device, x_alone
        self.inline_s = self.alone_s = 0.0

    def __call__(self, x, t):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.model(x, t)
        _sync(self.device)
        t1 = time.perf_counter()
        self.model(self.x_alone, t)
        _sync(self.device)
        self.inline_s += t1 - t0
        self.alone_s += time.perf_counter() - t1
        return out


def machine_info(device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["loadavg_1min_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def bench_method(method, model, schedule, args, device, shape, rng_seed):
    g = torch.Generator(device=device).manual_seed(rng_seed)
    x_T = torch.randn(shape, generator=g, device=device)
    timed = PairedModel(model, device, torch.randn(shape, generator=g, device=device))
    info = {}
    _sync(device)
    t0 = time.perf_counter()
    samplers.sample(timed, x_T, schedule, args.steps, method, profile_grid=args.grid, generator=g,
                    info=info)
    _sync(device)
    total = time.perf_counter() - t0 - timed.alone_s  # the run without the interleaved extra calls
    return {"nfe": info["nfe"], "total_s": total, "inline_s": timed.inline_s, "alone_s": timed.alone_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cpu", help="config profile whose model is timed (default cpu)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--grid", default="uniform", choices=["uniform", "quad"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default=",".join(samplers.METHODS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        samplers.nfe(m, args.steps, profile_grid=args.grid)  # fail early on a bad name or step count

    cfg = get_config(args.profile)
    torch.manual_seed(0)
    model = build_unet(cfg.model).to(device).eval()
    shape = (args.batch, cfg.model.in_channels, cfg.model.resolution, cfg.model.resolution)
    schedule = linear_schedule(cfg.diffusion.T, cfg.diffusion.beta_start, cfg.diffusion.beta_end)
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info(device)

    with torch.no_grad():  # warm-up of the network (allocator, kernels); DEIS's one-off per-grid
        x = torch.randn(shape, device=device)  # coefficients (a few ms) stay inside its first run
        for _ in range(2):
            model(x, samplers.time_tensor(500, x))

    runs = {m: [] for m in methods}
    for r in range(args.repeats):
        # interleaved and rotated, so slow phases of a shared machine and order effects hit every method
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:
            res = bench_method(m, model, schedule, args, device, shape, rng_seed=r)
            runs[m].append(res)
            print(f"repeat {r} {m:6s} NFE {res['nfe']:3d}  run {res['total_s']:.3f}s  inline {res['inline_s']:.3f}s"
                  f"  alone {res['alone_s']:.3f}s  ratio {res['total_s'] / res['alone_s']:.4f}"
                  f"  inline ratio {res['total_s'] / res['inline_s']:.4f}", flush=True)

    summary = {}
    for m, rs in runs.items():
        ratio = statistics.median(x["total_s"] / x["alone_s"] for x in rs)
        inline = statistics.median(x["total_s"] / x["inline_s"] for x in rs)
        n_steps = len(samplers.time_pairs(schedule, args.steps, samplers.METHODS[m].grid(None, args.grid)))
        summary[m] = {"nfe": rs[0]["nfe"], "ratio_median": ratio, "inline_ratio_median": inline,
                      "sampler_overhead_ms_per_step_median": statistics.median(
                          1e3 * (x["total_s"] - x["inline_s"]) / n_steps for x in rs),
                      "meets_target": bool(ratio <= TARGET and inline <= TARGET),
                      "runs": rs}
    try:
        machine["loadavg_1min_at_end"] = os.getloadavg()[0]
    except OSError:
        pass
    out = {"what": "wall time of a full sampling run / time of its network evaluations", "target": TARGET,
           "config": {"profile": args.profile, "batch": args.batch, "steps": args.steps, "grid": args.grid,
                      "repeats": args.repeats, "shape": list(shape),
                      "model_parameters": sum(q.numel() for q in model.parameters())},
           "machine": machine, "date_utc": started.isoformat(timespec="seconds"),
           "elapsed_s": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "results": summary}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"sampler_overhead_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Sampler overhead ({device.type})", "",
             f"`{out['command']}` on {out['date_utc']}: {machine['cpu']}, {machine['torch_threads']} torch threads, "
             f"torch {machine['torch']}, profile `{args.profile}` UNet ({out['config']['model_parameters']:,} "
             f"parameters), batch {args.batch}, S = {args.steps} ({args.grid}), {args.repeats} repeats.", "",
             "ratio = full run / the network alone for the same NFE calls (each alone call made right after its "
             "sampler call, same shape and t, so both see the same load); inline ratio = full run / time inside "
             f"the network during that run. Medians over repeats. Target <= {TARGET}. Load average (1 min) "
             f"{machine.get('loadavg_1min_at_start', float('nan')):.2f} at start, "
             f"{machine.get('loadavg_1min_at_end', float('nan')):.2f} at end.", "",
             "| method | NFE | ratio | inline ratio | sampler ms/step | meets target |",
             "|---|---|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['nfe']} | {s['ratio_median']:.4f} | {s['inline_ratio_median']:.4f} | "
                     f"{s['sampler_overhead_ms_per_step_median']:.2f} | {'yes' if s['meets_target'] else 'no'} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return out


if __name__ == "__main__":
    main()
