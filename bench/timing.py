"""Timing on one device, shared by the benchmark scripts: a training variant that steps through
``lib.train.train_step`` (never a copy of it), interleaved repeats, FLOPs from
``torch.utils.flop_counter``, the device's measured dense bf16 matmul rate, and the top kernels of a
short ``torch.profiler`` trace.

Every timing synchronises the device before and after (CUDA kernels run asynchronously).
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time

import torch

from lib.train import EMA, make_autocast, make_optimizer, train_step

__all__ = ["sync", "float32_precision", "StepVariant", "time_interleaved", "flops_per_image",
           "bf16_matmul_rate", "top_kernels", "PRECISIONS"]

# float32: IEEE float32 everywhere (the paper's arithmetic); tf32: TF32 tensor cores for matmuls and
# convolutions; default: torch's own defaults (cuDNN convs in TF32, matmuls not), which is what
# lib.train and lib.generate run with when train.amp='none'.
PRECISIONS = ("float32", "tf32", "default")


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def float32_precision(mode: str):
    """Set the TF32 switches of matmuls and cuDNN for the block, then restore them."""
    if mode not in PRECISIONS:
        raise ValueError(f"precision {mode!r}; valid: {', '.join(PRECISIONS)}")
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if mode == "float32":
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    elif mode == "tf32":
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class StepVariant:
    """One way of training: a model, its Adam and EMA as lib.train builds them, a loss, and the
    settings (bf16 autocast, channels_last, fused Adam, torch.compile). :meth:`step` is exactly
    ``lib.train.train_step``."""

    def __init__(self, name, model, loss_fn, tcfg, device, *, amp="none", precision="default",
                 channels_last=False, fused=False, compile_backend=None, seed=0):
        self.name, self.loss_fn, self.device, self.precision = name, loss_fn, torch.device(device), precision
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last, self.grad_clip = channels_last, tcfg.grad_clip
        t = dataclasses.replace(tcfg, amp=amp, fused_adam=fused)  # lib.train's own builders for these settings
        self.ema = EMA(self.model, t.ema_decay, t.ema_rampup)
        self.opt = make_optimizer(self.model, t, self.device)
        self.net = torch.compile(self.model, backend=compile_backend) if compile_backend else self.model
        self.g = torch.Generator(device=self.device).manual_seed(seed)
        self.autocast = make_autocast(t, self.device)
        self.settings = {"amp": amp, "precision": precision, "channels_last": channels_last, "fused_adam": fused,
                         "compile": compile_backend or False}
        self.model.train()

    def batch(self, x0: torch.Tensor) -> torch.Tensor:
        x0 = x0.to(self.device)
        return x0.contiguous(memory_format=torch.channels_last) if self.channels_last else x0

    def step(self, x0):
        with float32_precision(self.precision):
            return train_step(self.model, self.opt, self.ema, self.loss_fn, x0, self.g, net=self.net,
                              grad_clip=self.grad_clip, autocast=self.autocast)

    def run(self, batches) -> float:
        """Seconds for one step on each of ``batches`` (device synchronised around)."""
        sync(self.device)
        t0 = time.perf_counter()
        for x0 in batches:
            self.step(x0)
        sync(self.device)
        return time.perf_counter() - t0


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
