"""Timing on one device, shared by the benchmark scripts: the step timer of lib.experiment.steptime (a
training variant that steps through ``lib.train.train_step``, never a copy of it), interleaved repeats, FLOPs from
``torch.utils.flop_counter``, the device's measured dense bf16 matmul rate, and the top kernels of a
short ``torch.profiler`` trace.

Every timing synchronises the device before and after (CUDA kernels run asynchronously).
"""
from __future__ import annotations

import statistics
import time

import torch

from lib.experiment.steptime import PRECISIONS, StepVariant, float32_precision, sync

__all__ = ["sync", "float32_precision", "StepVariant", "time_interleaved", "flops_per_image",
           "bf16_matmul_rate", "top_kernels", "PRECISIONS"]


def time_interleaved(variants, batches, *, warmup: int, repeats: int, steps: int, batch_size: int,
                     deadline: float | None = None) -> dict:
    """Warm up each variant, then ``repeats`` rounds timing ``steps`` steps of every variant in turn
    (order alternating), so that drifts hit all alike. Returns per-variant images/s (median and all
    runs), peak memory (CUDA, of the warm-up) and ``ratios[a][b]`` = median per-round step-time ratio
    a/b. Stops adding rounds once ``deadline`` (time.perf_counter()) has passed (at least one)."""
    xs = {v.name: [v.batch(b) for b in batches] for v in variants}
    peak = {}
    for v in variants:
        if v.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(v.device)
        v.run([xs[v.name][i % len(batches)] for i in range(warmup)])
        if v.device.type == "cuda":
            peak[v.name] = torch.cuda.max_memory_allocated(v.device) / 2**30
    runs = {v.name: [] for v in variants}
    for r in range(repeats):
        if r > 0 and deadline is not None and time.perf_counter() > deadline:
            break
        for v in variants if r % 2 == 0 else variants[::-1]:
            dt = v.run([xs[v.name][i % len(batches)] for i in range(steps)])
            runs[v.name].append(steps * batch_size / dt)
    out = {"variants": {}, "ratios": {}, "rounds": len(next(iter(runs.values())))}
    for v in variants:
        ips = runs[v.name]
        med = statistics.median(ips)
        out["variants"][v.name] = {"images_per_s": med, "step_ms": 1e3 * batch_size / med, "images_per_s_runs": ips,
                                   "settings": v.settings, **({"peak_memory_gib": peak[v.name]} if v.name in peak else {})}
    for a in runs:
        out["ratios"][a] = {b: statistics.median(runs[b][i] / runs[a][i] for i in range(len(runs[a])))
                            for b in runs if b != a}
    return out


def flops_per_image(variant: StepVariant, x0: torch.Tensor, t: torch.Tensor) -> dict:
    """FLOPs per image counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention):
    one forward of the ε-network, and one whole training step (loss forward and backward; Adam and
    the EMA do no matmuls). The variant must be eager (not compiled); its weights take one step."""
    from torch.utils.flop_counter import FlopCounterMode

    x0 = variant.batch(x0)
    n = len(x0)
    with FlopCounterMode(display=False) as fc, torch.no_grad(), variant.autocast:
        variant.model(x0, t.to(variant.device))
    fwd = fc.get_total_flops() / n
    with FlopCounterMode(display=False) as fc:
        variant.step(x0)
    return {"forward": fwd, "train_step": fc.get_total_flops() / n}


def bf16_matmul_rate(device, n: int = 8192, iters: int = 50) -> float:
    """Measured dense bf16 matmul FLOP/s of the device (n×n by n×n, after a warm-up)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2.0 * n**3 * iters / (time.perf_counter() - t0)


def top_kernels(fn, device, *, calls: int = 3, k: int = 15) -> list[dict]:
    """The ``k`` most expensive kernels (CUDA) or operators (CPU) of ``calls`` calls of ``fn``, by
    self time, from a torch.profiler trace (one untraced call first)."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    cuda = device.type == "cuda"
    fn()
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        sync(device)

    def self_us(e):
        if not cuda:
            return e.self_cpu_time_total
        for attr in ("self_device_time_total", "self_cuda_time_total"):  # renamed in newer torch
            if hasattr(e, attr):
                return getattr(e, attr)
        return 0.0
    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events) or 1.0
    events.sort(key=self_us, reverse=True)
    return [{"name": e.key[:120], "calls": int(e.count), "self_ms_per_call_of_fn": self_us(e) / 1e3 / calls,
             "share": self_us(e) / total} for e in events[:k]]
