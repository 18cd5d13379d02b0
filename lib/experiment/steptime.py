"""The step timer: one training step as ``lib.train`` takes it, timed on one device.

:class:`StepVariant` builds a model's Adam, EMA and autocast with lib.train's own builders for a
``train`` section (plus the settings a benchmark varies: bf16, TF32, channels_last, fused Adam,
torch.compile) and steps it with ``lib.train.train_step`` — never a copy of it. The benchmarks
(bench/timing.py, bench/train_speed.py, the GPU check) and notebook 06 (:func:`seconds_per_step`,
the cost of the CDM arm) all time through it. Every timing synchronises the device before and after
(CUDA kernels run asynchronously).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from lib import data
from lib.factory import build_model, schedule_of
from lib.recipe import EMA, make_autocast, make_loss, make_optimizer, train_step

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


def seconds_per_step(cfg, arm: str, n_steps: int = 3, warmup: int = 1, device="cpu") -> float:
    """Wall time of one ``lib.train.train_step`` of ``arm`` under ``cfg`` (loss, backward, clip, Adam, EMA).

    A fresh model of ``cfg.model`` on one real batch of ``cfg.data``, with the optimiser, EMA and
    autocast lib.train builds from ``cfg.train``; ``warmup`` untimed steps first. Only ratios between
    arms measured in the same process are meaningful (notebook 06: the cost of the CDM arm)."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = build_model(cfg.model)
    if cfg.data.dataset in data.TOY_DATASETS:
        x0 = data.toy_distribution(cfg.data.dataset).sample(t.batch_size, generator=torch.Generator().manual_seed(0))
    else:
        x0 = data.training_batch(data.load_images(cfg.data)[0][:t.batch_size])
    v = StepVariant(arm, model, make_loss(cfg, arm, schedule_of(cfg)), t, device, amp=t.amp, fused=t.fused_adam)
    x0 = v.batch(x0.float())
    v.run([x0] * warmup)
    return v.run([x0] * n_steps) / n_steps
