"""The GPU speed benchmark: training and sampling throughput of the paper UNet, and an end-to-end run.

    python bench/gpu_speed.py                      # on a GPU machine (about 6 minutes)
    python bench/gpu_speed.py --dry-run            # the CPU at tiny sizes (the code paths, no figure)
    python bench/gpu_speed.py --sections sampling  # some sections; the others stay in the file

It writes ``<out>/gpu_speed_<gpu-name>.json`` and ``.md`` (``--out`` defaults to bench/results; for
``--dry-run`` to a fresh temporary folder), rewritten after every finished section. ``make gpu-check``
(bench/gpu_check.py) runs these sections after ``pytest -m cuda`` within one time budget, into one report.

Sections: *environment* (device, memory, driver, CUDA, torch, the measured bf16 matmul rate); *training*
(the paper UNet at batch 128 through ``lib.train.train_step`` — the step timer of
lib.experiment.steptime, via bench/timing.py — in float32, TF32 and bf16 autocast, each with and
without channels_last, fused Adam, torch.compile, against diffusers' UNet2DModel built the same way;
peak memory; the S²-DM step against plain L_0; the CDM step against the baseline; MFU from FLOPs
counted by torch.utils.flop_counter); *sampling* (DDIM S = 10 at batch 1000 through lib.generate, and
the Inception feature network's images/s); *end_to_end* (``python -m lib.train --profile gpu`` on a
synthetic data set in CIFAR-10's own file format, killed once and resumed, then ``python -m
lib.generate``; and the end-to-end estimate: paper and gpu-profile training time and 50k DDIM-10 samples
at the measured rates).
"""
from __future__ import annotations

import copy
import gc
import math
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from checkreport import Section  # noqa: E402  (bench/checkreport.py)
from machine import cpu_model  # noqa: E402  (bench/machine.py)
from timing import (StepVariant, bf16_matmul_rate, flops_per_image, sync, time_interleaved,  # noqa: E402
                    top_kernels)
import checkreport  # noqa: E402
import unet2d_twin  # noqa: E402

from lib.infra import checkpoint as ckpt  # noqa: E402
from lib import data as data_mod  # noqa: E402
from lib import readers  # noqa: E402
from lib import generate as gen  # noqa: E402
from lib import samplers  # noqa: E402
from lib.infra.config import get_config  # noqa: E402
from lib.factory import build_model, schedule_of  # noqa: E402
from lib.losses import ddpm_loss, sample_t  # noqa: E402
from lib.infra.runlog import read_log  # noqa: E402
from lib.recipe import make_loss  # noqa: E402

SECTIONS = ("environment", "training", "sampling", "end_to_end")
BUDGET_S = {"environment": 15, "training": 200, "sampling": 45, "end_to_end": 120}  # 380 s
DRY_BUDGET_S = {k: 60 for k in SECTIONS}
TARGET_TRAIN_IPS = 6300  # paper UNet, batch 128, one H100/H200: about 30 % of the bf16 limit at 37 GFLOP per image
TARGET_VS_UNET2D = 1.2  # our fastest variant against UNet2DModel at the same precision
TARGET_DDIM50K_S = 60.0  # 50,000 DDIM-10 samples
TARGET_S2DM_OVERHEAD = 0.03  # S²-DM step against the plain L_0 step
# Nominal dense bf16 tensor-core rates (vendor data sheets), beside the rate measured at run time.
NOMINAL_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12))


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the real run on a GPU, or the dry run on a CPU."""

    train_batch: int = 128
    warmup: int = 5
    repeats: int = 3
    steps: int = 10
    compile_warmup: int = 3
    compile_backend: str = "inductor"
    overhead_repeats: int = 7
    cdm_repeats: int = 3
    cdm_steps: int = 3
    sample_batch: int = 1000
    sample_timed: int = 2000
    inception_batch: int = 250
    inception_size: int = 299
    inception_repeats: int = 4
    fid_pipeline_n: int = 2000
    matmul_n: int = 8192
    e2e_images_per_file: int = 500
    e2e_steps: int = 300
    e2e_ckpt_every: int = 100
    e2e_log_every: int = 20
    e2e_samples: int = 1000
    e2e_sample_batch: int = 500
    need_eager_s: float = 8.0  # the least time left in which a variant is still started
    need_compile_s: float = 90.0


GPU_SIZES = Sizes()
DRY_SIZES = Sizes(train_batch=4, warmup=1, repeats=1, steps=1, compile_warmup=1, compile_backend="eager",
                  overhead_repeats=3, cdm_repeats=2, cdm_steps=1, sample_batch=4, sample_timed=8, inception_batch=2,
                  inception_size=75, inception_repeats=1, fid_pipeline_n=4, matmul_n=128, e2e_images_per_file=16,
                  e2e_steps=12, e2e_ckpt_every=4, e2e_log_every=2, e2e_samples=8, e2e_sample_batch=4,
                  need_eager_s=1.0, need_compile_s=3.0)
# The dry run's UNet: the paper's architecture (3 channels, 32×32, attention at 16×16) at a tiny width.
DRY_MODEL = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))


# ============================================================================ shared pieces
class Ctx:
    """What every section needs: the device under test, sizes, the config and a scratch folder."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.device = torch.device("cpu") if dry else torch.device("cuda")
        self.sizes = DRY_SIZES if dry else GPU_SIZES
        self.cfg = experiment_config(dry)
        self.schedule = schedule_of(self.cfg)
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_speed_"))


def experiment_config(dry: bool):
    """The paper profile (its UNet, optimiser and loss), shrunk to DRY_MODEL for the dry run."""
    cfg = get_config("paper")
    if dry:
        cfg = replace(cfg, model=replace(cfg.model, **DRY_MODEL))
    return cfg


def fixed_inputs(cfg, n: int, seed: int = 0):
    """x_0 in [-1, 1], antithetic t, ε and ε′ drawn on the CPU: the same inputs on every device."""
    m = cfg.model
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((n, m.in_channels, m.resolution, m.resolution), generator=g) * 2 - 1
    t = sample_t(n, cfg.diffusion.T, generator=g)
    return x0, t, torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)


def release_memory() -> None:
    """Return freed CUDA blocks (call after the last reference to a model is dropped)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _which(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


# ============================================================================ environment
OPTIONAL = (("diffusers", "diffusers"), ("clean-fid", "cleanfid"), ("mlxtend", "mlxtend"), ("papermill", "papermill"))


def section_environment(S: Section, ctx: Ctx) -> None:
    m = S.rec["measurements"]
    m.update(python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
             cpu=cpu_model(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
             device=str(ctx.device), dry_run=ctx.dry)
    import torchvision

    m["torchvision"] = torchvision.__version__
    for _pkg, mod in OPTIONAL:
        m[f"has_{mod}"] = _which(mod)
    ok = checkreport.torch_version() >= checkreport.MIN_TORCH
    S.check("torch is new enough for lib/ and this check", torch.__version__, f">= {'.'.join(map(str, checkreport.MIN_TORCH))}", ok,
            "" if ok else f"found torch {torch.__version__}, the project needs {'.'.join(map(str, checkreport.MIN_TORCH))} or newer")
    m["cuda_available"] = torch.cuda.is_available()
    m["c_compiler"] = shutil.which("cc") or shutil.which("gcc")  # torch.compile (inductor/triton) builds with it
    if ctx.device.type == "cuda":
        p = torch.cuda.get_device_properties(ctx.device)
        m.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 2), gpu_count=torch.cuda.device_count(),
                 compute_capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count, cuda=torch.version.cuda,
                 cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
        try:
            m["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:  # noqa: BLE001
            m["nccl"] = f"unknown ({type(e).__name__})"
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,power.limit,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            m["nvidia_smi"] = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else r.stderr.strip()[:200]
        except (OSError, subprocess.SubprocessError) as e:
            m["nvidia_smi"] = f"not available ({type(e).__name__})"
    m["tmp_free_gib"] = round(shutil.disk_usage(ctx.tmp).free / 2**30, 1)
    rate = S.part("bf16 matmul rate", lambda: bf16_matmul_rate(ctx.device, ctx.sizes.matmul_n))
    if rate:
        m["bf16_matmul_tflops_measured"] = round(rate / 1e12, 2)
    nominal = next((r for k, r in NOMINAL_BF16 if k in m.get("gpu", "")), None)
    m["bf16_tflops_nominal"] = nominal / 1e12 if nominal else None




# ============================================================================ training speed
def section_training(S: Section, ctx: Ctx) -> None:
    dev, z, cfg = ctx.device, ctx.sizes, ctx.cfg
    m, tcfg, B = cfg.model, cfg.train, z.train_batch
    gpu = dev.type == "cuda"
    meas = S.rec["measurements"]
    meas["model"] = {"profile": "paper" if not ctx.dry else "paper architecture, tiny width (dry run)", "batch": B,
                     "warmup": z.warmup, "repeats": z.repeats, "steps_per_repeat": z.steps}
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (2 * B, m.in_channels, m.resolution, m.resolution), generator=g, dtype=torch.uint8)
    batches = [data_mod.to_model_range(imgs[i * B:(i + 1) * B]) for i in range(2)]  # speed does not depend on content
    env = S.report.data["sections"].get("environment", {}).get("measurements", {})
    peak = (env.get("bf16_matmul_tflops_measured") or 0) * 1e12
    nominal = (env.get("bf16_tflops_nominal") or 0) * 1e12
    loss_s2dm = make_loss(cfg, "s2dm", ctx.schedule)
    have_diffusers, dver = unet2d_twin.available()
    meas["diffusers"] = dver
    if not have_diffusers:
        S.note(f"UNet2DModel comparison skipped: {dver}")
    meas["variants"] = results = {}
    flops = {}
    best = []  # [name, StepVariant] of our fastest variant so far, kept for its profiler trace

    def build(kind):
        torch.manual_seed(0)  # both networks start from a seed
        return build_model(m) if kind == "ours" else unet2d_twin.DiffusersEps(**unet2d_twin.diffusers_kwargs(m))

    def measure(kind, precision, amp, cl, fused, compiled=False, reserve=0.0):
        fused = fused and gpu  # lib.train fuses Adam on CUDA only
        name = (f"{'ours' if kind == 'ours' else 'UNet2DModel'} {'bf16' if amp == 'bf16' else precision}"
                f"{' channels_last' if cl else ''}{' fused-Adam' if fused else ''}{' compiled' if compiled else ''}")

        def fn():
            held = torch.cuda.memory_allocated(dev) / 2**30 if gpu else 0.0  # the kept fastest variant
            v = StepVariant(name, build(kind), loss_s2dm, tcfg, dev, amp=amp, precision=precision, channels_last=cl,
                            fused=fused, compile_backend=z.compile_backend if compiled else None)
            r = time_interleaved([v], batches, warmup=z.compile_warmup if compiled else z.warmup, repeats=z.repeats,
                                 steps=z.steps, batch_size=B, deadline=S.deadline - 5)["variants"][name]
            if "peak_memory_gib" in r:
                r["peak_memory_gib"] -= held
            r.update(kind=kind, parameters=sum(p.numel() for p in v.model.parameters()))
            if kind in flops and peak:
                r["mfu_measured_peak"] = r["images_per_s"] * flops[kind]["train_step"] / peak
            if kind in flops and nominal:
                r["mfu_nominal_peak"] = r["images_per_s"] * flops[kind]["train_step"] / nominal
            results[name] = r
            print(f"   {name}: {r['images_per_s']:.0f} images/s" +
                  (f", peak {r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else ""), flush=True)
            S.report.write()
            if kind == "ours" and (not best or r["images_per_s"] > results[best[0]]["images_per_s"]):
                best[:] = [name, v]  # drops the previous one
            del v
            release_memory()
            return name
        if name in results:  # e.g. fused and foreach Adam are the same thing on a CPU
            return None
        return S.part(f"train {name}", fn, need_s=(z.need_compile_s if compiled else z.need_eager_s) + reserve)

    def count_flops(kind):
        def fn():
            v = StepVariant("flops", build(kind), loss_s2dm, tcfg, dev)
            x, tt, _, _ = fixed_inputs(cfg, 2)
            flops[kind] = flops_per_image(v, x, tt)
            del v
            release_memory()
        S.part(f"FLOPs per image ({kind}, torch.utils.flop_counter)", fn)
    count_flops("ours")
    if have_diffusers:
        count_flops("UNet2DModel")
    meas["flops_per_image"] = flops
    meas["bf16_peak_tflops"] = {"measured_matmul": peak / 1e12 or None, "nominal": nominal / 1e12 or None}

    # Most informative first, so that a short budget still answers the targets.
    plan = [("ours", "default", "bf16", True, True), ("UNet2DModel", "default", "bf16", True, True),
            ("ours", "float32", "none", True, True), ("UNet2DModel", "float32", "none", True, True),
            ("ours", "tf32", "none", True, True), ("ours", "default", "bf16", False, True),
            ("ours", "tf32", "none", False, True), ("ours", "float32", "none", False, True),
            ("ours", "default", "bf16", True, False)]
    for kind, precision, amp, cl, fused in plan:
        if kind == "UNet2DModel" and not have_diffusers:
            continue
        measure(kind, precision, amp, cl, fused)

    # The S²-DM step against plain L_0 (and τ = 1), and CDM against the baseline: paired, interleaved.
    def paired(label, pairs, repeats, steps):
        def fn():
            vs = [StepVariant(n, build("ours"), lf, tcfg, dev, amp="bf16", channels_last=True, fused=gpu) for n, lf in pairs]
            r = time_interleaved(vs, batches, warmup=z.warmup, repeats=repeats, steps=steps, batch_size=B,
                                 deadline=S.deadline - 5)
            meas[label] = r
            del vs
            release_memory()
            return r
        return S.part(label, fn, need_s=z.need_eager_s * 2)

    l0 = lambda net, x0, g, parts: ddpm_loss(net, x0, ctx.schedule, generator=g)  # noqa: E731
    ov = paired("s2dm_vs_l0", [("s2dm", loss_s2dm), ("plain L_0", l0), ("tau=1", make_loss(cfg, "baseline", ctx.schedule))],
                z.overhead_repeats, z.steps)
    cd = paired("cdm_vs_baseline", [("cdm", make_loss(cfg, "cdm", ctx.schedule)),
                                    ("baseline", make_loss(cfg, "baseline", ctx.schedule))],
                z.cdm_repeats, z.cdm_steps)
    if cd:
        meas["cdm_step_over_baseline_step"] = cd["ratios"]["cdm"]["baseline"]

    # torch.compile last (it is the slowest to set up): ours, then UNet2DModel if time is left.
    best_eager = max((k for k in results if results[k]["kind"] == "ours"), key=lambda k: results[k]["images_per_s"],
                     default=None)
    if best_eager:
        s = results[best_eager]["settings"]
        args = (s["precision"], s["amp"], s["channels_last"], s["fused_adam"])
        reserve = 2 * z.need_eager_s  # keep time for the profiler traces below
        measure("ours", *args, compiled=True, reserve=reserve)
        if have_diffusers and not ctx.dry:  # the same code path as ours: spared in the dry run
            measure("UNet2DModel", *args, compiled=True, reserve=reserve)

    # ---- targets
    tag = " (dry run: CPU at tiny sizes; the verdict only exercises the code)" if ctx.dry else ""
    ours = {k: v for k, v in results.items() if v["kind"] == "ours"}
    if not ours:
        S.note("no training variant finished: no targets judged")
        return
    fastest, kept = best if best else (max(ours, key=lambda k: ours[k]["images_per_s"]), None)
    ips = ours[fastest]["images_per_s"]
    failed = []
    if not S.target(f"fastest variant ({fastest}) ≥ {TARGET_TRAIN_IPS:,} images/s, paper UNet, batch 128", round(ips, 1),
                    f">= {TARGET_TRAIN_IPS}", ips >= TARGET_TRAIN_IPS, tag.strip(" ()")):
        failed.append(fastest)
    f32 = [k for k in ours if ours[k]["settings"]["precision"] == "float32" and ours[k]["settings"]["amp"] == "none"]
    if f32:
        k = max(f32, key=lambda k: ours[k]["images_per_s"])
        S.target(f"float32 (the paper's arithmetic): {k}", round(ours[k]["images_per_s"], 1), "reported beside", None)
    twin, judged, why = _twin_of(fastest, results), fastest, ""
    if not twin:  # e.g. the compiled UNet2DModel did not fit the budget: judge the fastest pair measured alike
        pairs = [k for k in ours if _twin_of(k, results)]
        if pairs:
            judged = max(pairs, key=lambda k: ours[k]["images_per_s"])
            twin, why = _twin_of(judged, results), f"UNet2DModel was not measured as {fastest}; "
    if twin:
        ratio = ours[judged]["images_per_s"] / results[twin]["images_per_s"]
        if not S.target(f"{judged} vs {twin}", round(ratio, 3), f">= {TARGET_VS_UNET2D}×", ratio >= TARGET_VS_UNET2D,
                        (why + tag.strip(" ()")).strip("; ")):
            failed.append(judged)
    elif have_diffusers:
        S.target(f"{fastest} vs UNet2DModel at the same precision", None, f">= {TARGET_VS_UNET2D}×", None,
                 "no UNet2DModel variant finished")
    for k in f32:
        tw = _twin_of(k, results)
        if tw and k != judged:
            S.target(f"float32: {k} vs {tw}", round(ours[k]["images_per_s"] / results[tw]["images_per_s"], 3),
                     "reported beside", None)
    mfu = ours[fastest].get("mfu_measured_peak")
    if mfu is not None:
        S.target(f"MFU of {fastest} ({flops['ours']['train_step'] / 1e9:.2f} GFLOP per training image, "
                 f"flop_counter) against the measured bf16 matmul rate", round(mfu, 3), "reported", None)
    if cd:
        S.target("CDM step / baseline step (bf16, channels_last)", round(meas["cdm_step_over_baseline_step"], 3),
                 "reported", None)
    if ov:
        cost = ov["ratios"]["s2dm"]["plain L_0"] - 1.0  # step time of S²-DM / step time of L_0, minus 1
        floor = ov["ratios"]["s2dm"]["tau=1"] - 1.0
        if not S.target(f"S²-DM step over the plain L_0 step (bf16, channels_last{', fused Adam' if gpu else ''})", round(cost, 4),
                        f"<= {TARGET_S2DM_OVERHEAD:.0%}", cost <= TARGET_S2DM_OVERHEAD,
                        f"τ = 0.99 vs τ = 1 (the same work): {floor:+.2%}, the timing noise floor{tag}"):
            failed.append("s2dm")
    # ---- a short profiler trace of each variant that misses a target
    # (the dry run traces one, which exercises the code; its verdicts are meaningless anyway)
    for k in list(dict.fromkeys(failed))[:1 if ctx.dry else None]:
        def trace(k=k):
            if k == "s2dm":
                v = StepVariant("s2dm", build("ours"), loss_s2dm, tcfg, dev, amp="bf16", channels_last=True, fused=gpu)
            elif kept is not None and kept.name == k:
                v = kept
            else:
                s, kind = results[k]["settings"], results[k]["kind"]
                v = StepVariant(k, build(kind), loss_s2dm, tcfg, dev, amp=s["amp"], precision=s["precision"],
                                channels_last=s["channels_last"], fused=s["fused_adam"],
                                compile_backend=s["compile"] or None)
            x = v.batch(batches[0])
            S.rec["traces"][k] = top_kernels(lambda: v.step(x), dev, calls=1 if ctx.dry else 3)
        S.part(f"profiler trace of {k}", trace, need_s=z.need_eager_s)


def _twin_of(name: str, results: dict) -> str | None:
    """The UNet2DModel variant with exactly the settings of our variant ``name``."""
    s = results[name]["settings"]
    return next((k for k, v in results.items() if v["kind"] == "UNet2DModel" and v["settings"] == s), None)


# ============================================================================ sampling speed
def section_sampling(S: Section, ctx: Ctx) -> None:
    dev, z, m = ctx.device, ctx.sizes, ctx.cfg.model
    meas = S.rec["measurements"]
    shape = (m.in_channels, m.resolution, m.resolution)
    torch.manual_seed(0)
    model = build_model(m).to(dev).eval()  # float32, default layout: what lib.generate loads

    def run(net, n, autocast=False):
        ctx_ = torch.autocast(dev.type, dtype=torch.bfloat16) if autocast else torch.autocast(dev.type, enabled=False)
        with ctx_:
            return gen.generate(net, ctx.schedule, shape, n, method="ddim", num_steps=10, batch_size=z.sample_batch,
                                seed=0, device=dev, progress=False)

    def timed(label, net, autocast=False):
        run(net, z.sample_batch, autocast)  # warm-up: allocator, cuDNN algorithm choice
        sync(dev)
        t0 = time.perf_counter()
        x = run(net, z.sample_timed, autocast)
        dt = time.perf_counter() - t0
        ips = z.sample_timed / dt
        meas[label] = {"images_per_s": ips, "seconds": dt, "n": z.sample_timed, "batch": z.sample_batch,
                       "time_50k_s": 50_000 / ips, "finite": bool(torch.isfinite(x).all())}
        S.report.write()
        return ips

    ips = S.part("DDIM-10 as lib.generate runs it", lambda: timed("ddim10_lib_generate", model), need_s=3.0 if not ctx.dry else 0)
    if ips:
        t50 = 50_000 / ips
        tag = "dry run: CPU at tiny sizes; the verdict only exercises the code" if ctx.dry else ""
        if not S.target(f"50k DDIM-10 samples (batch {z.sample_batch}, float32, lib.generate)", round(t50, 1),
                        f"<= {TARGET_DDIM50K_S:.0f} s", t50 <= TARGET_DDIM50K_S, tag):
            def trace():
                x_T = gen.initial_noise(shape, 0, z.sample_batch, 0).to(dev)
                S.rec["traces"]["ddim10"] = top_kernels(
                    lambda: samplers.sample(model, x_T, ctx.schedule, 10, "ddim"), dev, calls=1)
            S.part("profiler trace of DDIM-10", trace, need_s=3.0 if not ctx.dry else 0)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    S.part("DDIM-10 channels_last + bf16 autocast (not what lib.generate does)",
           lambda: timed("ddim10_channels_last_bf16", model_cl, autocast=True), need_s=3.0 if not ctx.dry else 0)
    model = model_cl = None  # free the GPU memory before the Inception part (the closures above have run)
    release_memory()
    S.part("Inception feature network", lambda: inception_speed(S, ctx), need_s=5.0 if not ctx.dry else 0)


def inception_speed(S: Section, ctx: Ctx) -> None:
    """images/s of clean-fid's InceptionV3 when its weights are here, else of torchvision's
    inception_v3 architecture with random weights at 299×299 (a labelled stand-in)."""
    dev, z = ctx.device, ctx.sizes
    meas = S.rec["measurements"]
    net, label, size = None, None, z.inception_size
    weights = None
    if _which("cleanfid"):
        from lib.measure import fid

        weights = Path(fid.INCEPTION_DIR) / fid.INCEPTION_FILE
        if weights.is_file():
            from cleanfid.inception_torchscript import InceptionV3W

            net = InceptionV3W(fid.INCEPTION_DIR, download=False, resize_inside=True).to(dev).eval()
            label, size = "clean-fid InceptionV3 (real weights, legacy_tensorflow: resizes 32→299 inside)", 32
    if net is None:
        import torchvision

        tv = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        tv.fc = torch.nn.Identity()  # the 2048 pool features, as FID uses them
        net = tv.to(dev).eval()
        why = ("clean-fid not importable" if weights is None else f"Inception weights absent at {weights}")
        label = f"STAND-IN: torchvision inception_v3, random weights, {size}×{size} input ({why})"
    x = torch.rand(z.inception_batch, 3, size, size, device=dev) * (255 if size == 32 else 1)
    with torch.no_grad():
        net(x)
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(z.inception_repeats):
            net(x)
        sync(dev)
    ips = z.inception_batch * z.inception_repeats / (time.perf_counter() - t0)
    meas["inception"] = {"network": label, "images_per_s": ips, "batch": z.inception_batch, "input_size": size,
                         "network_time_50k_s": 50_000 / ips}
    S.report.write()
    if weights is not None and weights.is_file() and S.left() > (5 if not ctx.dry else 0):
        from lib.measure import fid

        imgs = torch.randint(0, 256, (z.fid_pipeline_n, 3, 32, 32), dtype=torch.uint8)
        t0 = time.perf_counter()
        fid.inception_features(imgs, mode="legacy_tensorflow", device=dev, batch_size=z.inception_batch)
        dt = time.perf_counter() - t0
        meas["inception_pipeline"] = {"what": "lib.measure.fid.inception_features (PNG round trip + network)",
                                      "n": z.fid_pipeline_n, "seconds": dt, "images_per_s": z.fid_pipeline_n / dt}


# ============================================================================ end to end
def write_synthetic_cifar10(root: Path, n_per_file: int, seed: int = 0) -> Path:
    """CIFAR-10-shaped images in CIFAR-10's own python-pickle batches under ``root`` (where
    lib.readers.load_cifar10 reads them): smooth random colour fields (4×4 colours, bilinear to 32×32)
    plus a little pixel noise, so that there is something to learn."""
    folder = readers.cifar10_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in readers.CIFAR10_TRAIN_FILES + readers.CIFAR10_TEST_FILES:
        coarse = torch.from_numpy(rng.uniform(0, 255, (n_per_file, 3, 4, 4)).astype(np.float32))
        fine = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
        fine = fine + torch.from_numpy(rng.normal(0, 8, fine.shape).astype(np.float32))
        img = fine.round().clamp(0, 255).to(torch.uint8).numpy()
        entry = {"batch_label": f"synthetic {name}", "labels": rng.integers(0, 10, n_per_file).tolist(),
                 "data": img.reshape(n_per_file, 3072),  # each row: 1024 red, 1024 green, 1024 blue values
                 "filenames": [f"synthetic_{name}_{i}.png" for i in range(n_per_file)]}
        ckpt.atomic_write_bytes(folder / name, lambda f, e=entry: pickle.dump(e, f, protocol=2))
    return folder


def section_end_to_end(S: Section, ctx: Ctx) -> None:
    z, dry = ctx.sizes, ctx.dry
    meas = S.rec["measurements"]
    root, run = ctx.tmp / "data", ctx.tmp / "run_s2dm"

    def data():
        write_synthetic_cifar10(root, z.e2e_images_per_file)
        x, y = readers.load_cifar10(root)
        S.check("synthetic CIFAR-10 files read by lib.readers.load_cifar10", list(x.shape), "[5·n, 3, 32, 32] uint8",
                x.shape == (5 * z.e2e_images_per_file, 3, 32, 32) and x.dtype == torch.uint8)
    S.part("synthetic CIFAR-10", data)
    sets = ["--set", f"data.root={root}", "--set", f"train.steps={z.e2e_steps}",
            "--set", f"train.ckpt_every={z.e2e_ckpt_every}", "--set", f"train.log_every={z.e2e_log_every}"]
    if dry:
        sets += ["--set", "train.device=cpu", "--set", f"train.batch_size={z.train_batch}"]
        sets += [a for k, v in DRY_MODEL.items() for a in ("--set", f"model.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}")]
    train_cmd = [sys.executable, "-m", "lib.train", "--profile", "gpu", "--arm", "s2dm", "--out", str(run), "--quiet", *sets]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    meas["train_command"] = " ".join(train_cmd[1:])

    def kill_and_resume():
        t0 = time.perf_counter()
        err = open(ctx.tmp / "train1.err", "w")
        p = subprocess.Popen(train_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        killed_at = None
        try:
            while p.poll() is None:
                done = ckpt.list_checkpoints(run)
                if done:
                    killed_at = done[-1].name
                    break
                if time.perf_counter() - t0 > max(5.0, S.left() - 30):
                    raise TimeoutError("the first training launch wrote no checkpoint in time")
                time.sleep(0.02)
        finally:  # also when the section's alarm interrupts the wait
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # the process group we started: the run and its helpers
            p.wait()
            err.close()
        meas["first_launch_s"] = time.perf_counter() - t0
        S.check("first launch killed (SIGKILL) after its first checkpoint", killed_at, "a checkpoint exists, run unfinished",
                killed_at is not None, "" if killed_at else f"the run ended by itself (rc {p.returncode}): "
                                                          f"{(ctx.tmp / 'train1.err').read_text()[-400:]}")
        t1 = time.perf_counter()
        r = subprocess.run(train_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(5.0, S.left() - 10))
        meas["second_launch_s"] = time.perf_counter() - t1
        S.check("relaunch resumes from the checkpoint and finishes", r.returncode,
                "exit 0, 'resuming' on stderr, final.pt written",
                r.returncode == 0 and "resuming" in r.stderr and (run / "final.pt").is_file(),
                "" if r.returncode == 0 else r.stderr[-600:])
        log = read_log(run)
        steps, loss = log["step"], log["loss"]
        expect = list(range(z.e2e_log_every, z.e2e_steps + 1, z.e2e_log_every))
        S.check("loss.csv: every logged step once, in order", [int(s) for s in steps][-3:], f"steps {expect[0]}..{expect[-1]}",
                [int(s) for s in steps] == expect)
        k = max(1, len(loss) // 4)
        first, last = float(np.mean(loss[:k])), float(np.mean(loss[-k:]))
        meas["loss_first_quarter"], meas["loss_last_quarter"] = first, last
        S.check("the loss falls (mean of the last quarter of the log vs the first)", round(last / first, 4), "< 1",
                last < first and all(math.isfinite(v) for v in loss))
        ips = [v for v in log["images_per_s"] if v > 0]
        if ips:
            meas["train_images_per_s_last_log"] = ips[-1]
    S.part("lib.train: kill and resume", kill_and_resume, need_s=20.0 if not dry else 0)

    def generate():
        out = ctx.tmp / "samples.pt"
        cmd = [sys.executable, "-m", "lib.generate", "--run-dir", str(run), "--out", str(out), "--method", "ddim",
               "--steps", "10", "--num-samples", str(z.e2e_samples), "--batch-size", str(z.e2e_sample_batch), "--quiet",
               "--device", "cpu" if dry else "cuda"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(5.0, S.left() - 2))
        meas["generate_s"] = time.perf_counter() - t0
        meas["generate_command"] = " ".join(cmd[1:])
        ok = r.returncode == 0 and out.is_file()
        S.check(f"lib.generate of {z.e2e_samples} samples exits 0 (it refuses non-finite samples)", r.returncode, "0", ok,
                "" if ok else (r.stdout + r.stderr)[-600:])
        if ok:
            x = torch.load(out, weights_only=True)
            S.check("samples: uint8 [N, 3, 32, 32], not constant", list(x.shape), f"[{z.e2e_samples}, 3, 32, 32]",
                    x.dtype == torch.uint8 and tuple(x.shape) == (z.e2e_samples, 3, 32, 32) and float(x.float().std()) > 0)
    S.part("lib.generate", generate, need_s=10.0 if not dry else 0)
    S.part("end-to-end estimate", lambda: estimate(S, ctx))


def estimate(S: Section, ctx: Ctx) -> None:
    """The end-to-end estimate at the rates this run measured: training time = steps × batch / (images/s of
    our fastest training variant) for the paper and gpu profiles, and 50k DDIM-10 samples through lib.generate."""
    secs = S.report.data["sections"]
    variants = secs.get("training", {}).get("measurements", {}).get("variants", {})
    ours = {k: v["images_per_s"] for k, v in variants.items() if v.get("kind") == "ours"}
    ddim = secs.get("sampling", {}).get("measurements", {}).get("ddim10_lib_generate")
    est = S.rec["measurements"]["estimate"] = {}
    tag = "dry run: CPU at tiny sizes, not a GPU figure" if ctx.dry else ""
    if ours:
        best = max(ours, key=ours.get)
        for profile in ("paper", "gpu"):
            t = get_config(profile).train
            est[f"{profile}_training_h"] = t.steps * t.batch_size / ours[best] / 3600
            S.target(f"end-to-end estimate: {profile}-profile training ({t.steps:,} steps × {t.batch_size}) at the "
                     f"rate of {best}", round(est[f"{profile}_training_h"], 2), "hours, reported", None, tag)
    if ddim:
        est["ddim10_50k_s"] = ddim["time_50k_s"]
        S.target("end-to-end estimate: 50k DDIM-10 samples through lib.generate", round(ddim["time_50k_s"], 1),
                 "seconds, reported", None, tag)
    if not est:
        S.note("no training or sampling rate was measured in this report: no end-to-end estimate")


# ============================================================================ main
FUNCS = {"environment": section_environment, "training": section_training, "sampling": section_sampling,
         "end_to_end": section_end_to_end}


def plan(ctx: Ctx, chosen, budgets: dict, report) -> list:
    """[(name, fn(section), budget_s)] of the chosen speed sections in order, the environment first when
    the report holds none (training reads the measured bf16 rate from it)."""
    steps = [(s, (lambda sec, f=FUNCS[s]: f(sec, ctx)), budgets[s]) for s in SECTIONS if s in chosen]
    if "environment" not in chosen and "environment" not in report.data["sections"]:
        steps.insert(0, ("environment", lambda sec: section_environment(sec, ctx), budgets["environment"]))
    return steps


def main(argv=None) -> int:
    start = time.perf_counter()
    cli = checkreport.parse_cli(argv, __doc__, SECTIONS, sum(BUDGET_S.values()) + 20, "gpu_speed")
    if cli == 2:
        return 2
    a, chosen, stem = cli
    budgets = DRY_BUDGET_S if a.dry_run else BUDGET_S
    report = checkreport.new_report(stem, a, chosen, SECTIONS, budgets, "GPU speed")
    ctx = Ctx(a.dry_run)
    try:
        checkreport.run_sections(report, plan(ctx, chosen, budgets, report), start + a.max_seconds)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    checkreport.finish(report, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
