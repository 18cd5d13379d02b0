"""Training and sampling speed on one device, in one run: our UNet against diffusers' UNet2DModel.

    .venv/bin/python bench/train_speed.py               # CUDA: paper UNet, batch 128; CPU: cpu-profile UNet
    .venv/bin/python bench/train_speed.py --compile     # also torch.compile both networks
    .venv/bin/python bench/train_speed.py --profile paper --steps 2 --repeats 3   # the paper UNet on CPU (slow)

What it times (warm-up iterations excluded, the device synchronised around every timing, medians of
``--repeats`` repeats, the variants interleaved within each repeat so that load changes on a shared
machine hit all of them alike):

(a) training images/s at batch ``--batch`` (128) with the training step of lib/train.py: the
    project's loss, backward, gradient-norm clip, Adam and EMA update, with bf16 autocast,
    channels_last and fused Adam on CUDA; for our UNet and for diffusers' ``UNet2DModel`` built as
    the same DDPM architecture (same channels, blocks, attention level, one head, GroupNorm,
    dropout; both parameter counts are printed);
(b) the cost of L_skip: the step with s2dm_loss at τ = 0.99 against τ = 1 (both draw ε′, so the
    difference is the L_skip arithmetic alone), and plain ddpm_loss (no ε′ draw) for reference;
(c) the cost of a CDM step against the baseline step, if lib/related/cdm.py provides ``make_loss``;
(d) sampling images/s: DDIM, eval mode, no grad, float32 as lib.generate runs it;
(e) the time of a 50k-sample Inception FID (lib/fid.py), fitted as t(N) = a + b·N on two sample
    counts and extrapolated to N = 50,000, if the Inception weights and CIFAR-10 statistics are on
    this machine; otherwise recorded as not measured.

The issue's targets are printed next to the measurements (pass / FAIL / n/a): ≥ 5,400 training
images/s for the paper UNet on one H100 (only judged for the paper model on CUDA), ahead of
UNet2DModel, L_skip costing ≤ 3 %. Results go to bench/results/train_speed_<device>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from machine import cpu_model  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib import samplers  # noqa: E402
from lib.config import get_config  # noqa: E402
from lib.losses import ddpm_loss  # noqa: E402
from lib.factory import build_model, schedule_of  # noqa: E402
from lib.train import EMA, make_loss  # noqa: E402
from lib.unet import num_groups  # noqa: E402

TARGET_IMAGES_PER_S = 5400  # paper CIFAR-10 UNet, one H100, batch 128: twice DDPM's 21 steps/s on a TPU v3-8
TARGET_LSKIP_COST = 0.03  # L_skip may add at most 3 % to a training step
FID_N = 50_000


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- the diffusers twin
def diffusers_kwargs(m) -> dict:
    """``UNet2DModel`` arguments that build the DDPM UNet of ``ModelConfig`` m (the google/ddpm-cifar10-32
    layout for the paper config): one (Attn)DownBlock2D per level, attention where the level's
    resolution is in attn_resolutions, one head of width C, DDPM's sinusoid (sin first, denominator
    half-1), GroupNorm eps 1e-6, TF-'SAME' downsampling (pad right/bottom), nearest + conv upsampling."""
    chans = [m.ch * k for k in m.ch_mult]
    res = [m.resolution // 2 ** i for i in range(len(m.ch_mult))]
    attn = [r in tuple(m.attn_resolutions) for r in res]
    groups = num_groups(min(chans))
    if any(c % groups for c in chans) or len({num_groups(c) for c in chans}) > 1:
        # UNet2DModel has one group count for every norm; ours picks it per width (lib.unet.num_groups)
        groups = min(num_groups(c) for c in chans)
    return dict(sample_size=m.resolution, in_channels=m.in_channels, out_channels=m.out_ch,
                block_out_channels=tuple(chans), layers_per_block=m.num_res_blocks,
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                attention_head_dim=None, norm_num_groups=groups, norm_eps=1e-6, dropout=m.dropout,
                downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, act_fn="silu",
                mid_block_scale_factor=1, time_embedding_type="positional", add_attention=True)


class DiffusersEps(torch.nn.Module):
    """``UNet2DModel`` behind the project's ε-model contract ``eps_model(x, t) -> eps``."""

    def __init__(self, **kwargs):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(**kwargs)

    def forward(self, x, t):
        return self.unet(x, t, return_dict=False)[0]


# ---------------------------------------------------------------------------- one training variant
class Variant:
    """A model, its optimiser and EMA, and a loss: the state of lib/train.py's loop for one arm."""

    def __init__(self, name, model, loss_fn, tcfg, device, *, image: bool, compile_: bool, seed: int = 0):
        self.name, self.model, self.loss_fn, self.t, self.device = name, model, loss_fn, tcfg, device
        if tcfg.channels_last and image:
            self.model = model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, tcfg.ema_decay)
        fused = tcfg.fused_adam and device.type == "cuda"
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                                    eps=tcfg.eps, weight_decay=tcfg.weight_decay, **({"fused": True} if fused else {}))
        self.net = torch.compile(self.model) if compile_ else self.model
        self.g = torch.Generator(device=device).manual_seed(seed)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.amp == "bf16")
        self.acc = {k: torch.zeros((), device=device) for k in ("loss", "l0", "lskip", "grad_norm")}
        self.model.train()

    def step(self, x0):
        """One step of lib/train.py's loop body (lr set, loss, backward, clip, Adam, EMA, log sums),
        without its finiteness check, which syncs the GPU only every log_every steps there."""
        T = self.t
        for grp in self.opt.param_groups:
            grp["lr"] = T.lr
        parts = {}
        with self.autocast:
            loss = self.loss_fn(self.net, x0, self.g, parts).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), T.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        self.acc["loss"] += loss.detach()
        self.acc["l0"] += parts.get("l0", loss.detach()).mean()
        self.acc["lskip"] += parts.get("lskip", torch.zeros((), device=self.device)).mean()
        self.acc["grad_norm"] += gn.detach().float()

    def timed(self, batches) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        for x0 in batches:
            self.step(x0)
        _sync(self.device)
        return time.perf_counter() - t0


class Batches:
    """Training batches as lib/train.py makes them, from a uint8 image set held on the device
    (random pixels: speed does not depend on the content): gather, scale to [-1, 1], random flip."""

    def __init__(self, m, batch, device, *, channels_last, flip, n_images=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        n = n_images or 8 * batch
        self.images = torch.randint(0, 256, (n, m.in_channels, m.resolution, m.resolution), generator=g,
                                    dtype=torch.uint8).to(device)
        self.batch, self.device, self.cl, self.flip, self.g = batch, device, channels_last, flip, g

    def take(self, k):
        out = []
        for _ in range(k):
            idx = torch.randperm(len(self.images), generator=self.g)[:self.batch].to(self.device)
            x = self.images[idx].float().div_(127.5).sub_(1.0)
            if self.flip:
                f = (torch.rand(self.batch, generator=self.g) < 0.5).to(self.device).view(-1, 1, 1, 1)
                x = torch.where(f, x.flip(-1), x)
            out.append(x.contiguous(memory_format=torch.channels_last) if self.cl else x)
        return out


# ---------------------------------------------------------------------------- measurements
def measure_training(variants, batches, args, device):
    """Interleaved timing: every repeat times ``args.steps`` steps of each variant in turn."""
    peak = {}
    for v in variants:  # warm-up (allocator, cuDNN autotuning, compilation), and its peak memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        v.timed(batches.take(args.warmup))
        if device.type == "cuda":
            peak[v.name] = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"  warm-up done: {v.name}", flush=True)
    runs = {v.name: [] for v in variants}
    for r in range(args.repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:  # alternate the order as well
            dt = v.timed(batches.take(args.steps))
            runs[v.name].append(args.steps * args.batch / dt)
        print(f"  repeat {r}: " + "  ".join(f"{k} {x[-1]:.1f}" for k, x in runs.items()), flush=True)
    out = {}
    for v in variants:
        ips = runs[v.name]
        out[v.name] = {"images_per_s_median": statistics.median(ips), "step_ms_median": 1e3 * args.batch / statistics.median(ips),
                       "images_per_s_runs": ips}
        if v.name in peak:
            out[v.name]["peak_memory_gib_warmup"] = peak[v.name]
    # Step-time ratios per repeat, then the median: each pair was timed back to back in one repeat.
    spread = {}

    def ratio(a, b, key=None):
        r = [runs[b][i] / runs[a][i] for i in range(args.repeats)]  # time_a / time_b
        if key and len(r) >= 2:
            q1, _, q3 = statistics.quantiles(r, n=4)
            spread[key] = [q1, q3]
        return statistics.median(r)
    return out, ratio, spread


@torch.no_grad()
def measure_sampling(model, schedule, m, args, device):
    model.eval()
    shape = (args.sample_batch, m.in_channels, m.resolution, m.resolution)
    g = torch.Generator(device=device).manual_seed(0)
    x_T = torch.randn(shape, generator=g, device=device)
    info = {}
    samplers.sample(model, x_T, schedule, args.sample_steps, "ddim", info=info)  # warm-up
    ts = []
    for _ in range(args.sample_repeats):
        _sync(device)
        t0 = time.perf_counter()
        samplers.sample(model, x_T, schedule, args.sample_steps, "ddim")
        _sync(device)
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    return {"method": "ddim", "steps": args.sample_steps, "nfe": info["nfe"], "batch": args.sample_batch,
            "dtype": "float32", "seconds_runs": ts, "images_per_s_median": args.sample_batch / med,
            "network_evals_per_s_median": args.sample_batch * info["nfe"] / med,
            "time_50k_samples_s_estimate": FID_N * med / args.sample_batch}


def measure_fid(args, device):
    """Time lib.fid.inception_fid on two sample counts and extrapolate t = a + b·N to 50k."""
    from lib import fid

    try:
        paths = fid.check_offline(args.fid_mode)
    except fid.FIDWeightsMissing as e:
        return {"measured": False, "note": "not measured: weights missing", "detail": str(e).splitlines()[0].rstrip(".:"),
                "weights": str(Path(fid.INCEPTION_DIR) / fid.INCEPTION_FILE),
                "stats": str(Path(fid.STATS_DIR) / fid.stats_filename("cifar10", args.fid_mode, 32, "train"))}
    sizes = [int(s) for s in args.fid_n.split(",")]
    g = torch.Generator().manual_seed(0)
    times = []
    for n in sizes:  # CIFAR-10-sized images: the cost is the PNG round trip and the Inception pass
        x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        _sync(device)
        t0 = time.perf_counter()
        fid.inception_fid(x, mode=args.fid_mode, device=device, batch_size=args.fid_batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
        print(f"  FID on {n} images: {times[-1]:.1f} s", flush=True)
    (n1, n2), (t1, t2) = sizes[:2], times[:2]
    b = (t2 - t1) / (n2 - n1)
    a = t1 - b * n1
    return {"measured": True, "mode": args.fid_mode, "sizes": sizes, "seconds": times, "a_s": a, "b_s_per_image": b,
            "formula": f"t(N) = a + b*N = {a:.2f} s + {b * 1e3:.4f} ms * N (fitted on N = {n1}, {n2})",
            "time_50k_s_estimate": a + b * FID_N, "paths": paths}


def cuda_info(device) -> dict:
    if device.type != "cuda":
        return {}
    p = torch.cuda.get_device_properties(device)
    return {"gpu": p.name, "gpu_memory_gib": p.total_memory / 2**30, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "gpu_count": torch.cuda.device_count()}


def git_state() -> dict:
    """The commit measured, and which files under lib/ differ from it (work in progress is measured as it is)."""
    import subprocess

    def run(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run("rev-parse", "HEAD") or None,
            "lib_changes": [ln[3:] for ln in run("status", "--porcelain", "--", "lib", "bench").splitlines()]}


def _loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# ---------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--profile", default="auto", help="model size: auto (paper on CUDA, cpu otherwise), ci, cpu, gpu, paper")
    p.add_argument("--batch", type=int, default=128, help="training batch (default 128, the paper's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat and variant (default 20 CUDA, 1 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default 10 CUDA, 3 CPU)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 7 CUDA, 15 CPU)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="set torch.backends.cudnn.benchmark (lib/train.py does not; this shows what it would gain)")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks (warm-up includes compiling)")
    p.add_argument("--amp", default="auto", choices=("auto", "none", "bf16"), help="auto: bf16 on CUDA, none on CPU")
    p.add_argument("--no-diffusers", action="store_true", help="skip the UNet2DModel comparison")
    p.add_argument("--sample-batch", type=int, default=500)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--sample-repeats", type=int, default=3)
    p.add_argument("--fid-mode", default="legacy_tensorflow", choices=("legacy_tensorflow", "clean"))
    p.add_argument("--fid-n", default=None, help="two sample counts for the FID timing fit (default 2000,5000 CUDA; 100,300 CPU)")
    p.add_argument("--fid-batch", type=int, default=200)
    p.add_argument("--skip-fid", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = args.profile if args.profile != "auto" else ("paper" if gpu else "cpu")
    # CPU: one step per block, many blocks, so that bursts of other jobs on a shared machine hit
    # single blocks (the median discards them); CUDA: blocks of 20 steps keep the launch queue full.
    args.steps = args.steps or (20 if gpu else 1)
    args.warmup = args.warmup or (10 if gpu else 3)
    args.repeats = args.repeats or (7 if gpu else 15)
    args.fid_n = args.fid_n or ("2000,5000" if gpu else "100,300")
    # Backend flags stay as lib/train.py and lib/generate.py leave them (TF32 for cuDNN convs is
    # torch's default), so the numbers are those of the project's real runs.
    if gpu and args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True

    cfg = get_config(profile)
    amp = args.amp if args.amp != "auto" else ("bf16" if gpu else "none")
    # The speed flags of the gpu profile on CUDA; plain float32 on CPU (as the cpu profile trains).
    tcfg = replace(cfg.train, batch_size=args.batch, amp=amp, channels_last=gpu, fused_adam=gpu, compile=args.compile)
    cfg = replace(cfg, train=tcfg)
    m, schedule = cfg.model, schedule_of(cfg)
    if m.kind != "unet":
        p.error(f"profile {profile!r} has no UNet")
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = {"device": str(device), "platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "loadavg_1min_at_start": _loadavg(), **cuda_info(device)}
    try:
        import diffusers
        machine["diffusers"] = diffusers.__version__
    except ImportError:
        args.no_diffusers = True

    def variant(name, make_net, loss_fn):
        torch.manual_seed(0)  # every network starts from the same seed
        return Variant(name, make_net().to(device), loss_fn, tcfg, device, image=True, compile_=args.compile)

    variants = [variant("ours_s2dm", lambda: build_model(m), make_loss(cfg, "s2dm", schedule)),
                variant("ours_baseline_tau1", lambda: build_model(m), make_loss(cfg, "baseline", schedule)),
                variant("ours_ddpm_loss", lambda: build_model(m),
                        lambda net, x0, g, parts: ddpm_loss(net, x0, schedule, generator=g))]
    ours = variants[0].model
    n_ours = sum(q.numel() for q in ours.parameters())
    notes, n_diff, dkw = [], None, None
    if not args.no_diffusers:
        dkw = diffusers_kwargs(m)
        variants.append(variant("diffusers_s2dm", lambda: DiffusersEps(**dkw), make_loss(cfg, "s2dm", schedule)))
        n_diff = sum(q.numel() for q in variants[-1].model.parameters())
        if num_groups(min(dkw["block_out_channels"])) != dkw["norm_num_groups"] or any(
                num_groups(c) != dkw["norm_num_groups"] for c in dkw["block_out_channels"]):
            notes.append(f"UNet2DModel uses {dkw['norm_num_groups']} GroupNorm groups everywhere; ours uses "
                         f"{sorted({num_groups(c) for c in dkw['block_out_channels']})} by width (same FLOPs up to the norms)")
    try:
        variants.append(variant("ours_cdm", lambda: build_model(m), make_loss(cfg, "cdm", schedule)))
        cdm_note = None
    except (ImportError, AttributeError) as e:
        cdm_note = f"not measured: lib/related/cdm.py with make_loss(cfg, schedule) is not available ({type(e).__name__}: {e})"
        print(f"(c) CDM {cdm_note}")
    print(f"device {device} ({machine.get('gpu', machine['cpu'])}), torch {torch.__version__}; profile {profile!r} UNet: "
          f"ours {n_ours:,} parameters" + (f", UNet2DModel {n_diff:,}" if n_diff else "") +
          f"; batch {args.batch}, amp {amp}, channels_last {gpu}, fused Adam {gpu}, compile {args.compile}", flush=True)

    batches = Batches(m, args.batch, device, channels_last=gpu, flip=cfg.data.random_flip)
    print("(a)-(c) training steps", flush=True)
    train, ratio, spread = measure_training(variants, batches, args, device)
    names = [v.name for v in variants]
    ratios = {
        "lskip_cost_tau099_over_tau1": ratio("ours_s2dm", "ours_baseline_tau1", "lskip_tau1") - 1.0,
        "lskip_cost_tau099_over_ddpm_loss": ratio("ours_s2dm", "ours_ddpm_loss", "lskip_ddpm") - 1.0,
        "tau1_over_ddpm_loss": ratio("ours_baseline_tau1", "ours_ddpm_loss") - 1.0,
    }
    if "diffusers_s2dm" in names:
        ratios["ours_speedup_over_diffusers"] = ratio("diffusers_s2dm", "ours_s2dm", "speedup")
    if "ours_cdm" in names:
        ratios["cdm_step_over_baseline_step"] = ratio("ours_cdm", "ours_baseline_tau1", "cdm")
    # interquartile range of the per-repeat ratios (same quantities as above: costs as ratio - 1)
    ratios["iqr"] = {k: ([a - 1.0, b - 1.0] if k.startswith("lskip") else [a, b]) for k, (a, b) in spread.items()}

    print("(d) sampling", flush=True)
    sampler_model = build_model(m).to(device)  # default memory layout, float32: what lib.generate loads
    sampler_model.load_state_dict(ours.state_dict())
    sampling = measure_sampling(sampler_model, schedule, m, args, device)
    if args.skip_fid:
        fid_res = {"measured": False, "note": "not measured: --skip-fid"}
    else:
        print("(e) FID timing", flush=True)
        fid_res = measure_fid(args, device)

    # the targets, judged where they apply
    ips = train["ours_s2dm"]["images_per_s_median"]
    paper_on_gpu = gpu and profile == "paper" and args.batch == 128
    checks = [
        {"check": f"training >= {TARGET_IMAGES_PER_S} images/s (paper UNet, batch 128, one H100)",
         "measured": round(ips, 1),
         "result": ("pass" if ips >= TARGET_IMAGES_PER_S else "FAIL") if paper_on_gpu else
         f"n/a (applies to the paper UNet at batch 128 on an H100; this run: {profile} UNet on {device.type})"},
        {"check": f"L_skip costs <= {TARGET_LSKIP_COST:.0%} of a training step (tau=0.99 vs tau=1)",
         "measured": round(ratios["lskip_cost_tau099_over_tau1"], 4),
         "result": "pass" if ratios["lskip_cost_tau099_over_tau1"] <= TARGET_LSKIP_COST else "FAIL"},
        # s2dm_loss computes L_skip at τ = 1 too (weight 0), so the line above compares equal work; the
        # method's whole price (ε′ draw + L_skip) is the step against plain ddpm_loss.
        {"check": f"S2-DM step costs <= {TARGET_LSKIP_COST:.0%} more than a plain ddpm_loss step (eps' draw + L_skip)",
         "measured": round(ratios["lskip_cost_tau099_over_ddpm_loss"], 4),
         "result": "pass" if ratios["lskip_cost_tau099_over_ddpm_loss"] <= TARGET_LSKIP_COST else "FAIL"},
    ]
    if "ours_speedup_over_diffusers" in ratios:
        checks.append({"check": "our UNet trains faster than UNet2DModel (same step, same device)",
                       "measured": round(ratios["ours_speedup_over_diffusers"], 4),
                       "result": "pass" if ratios["ours_speedup_over_diffusers"] > 1.0 else "FAIL"})
    # A verdict whose interquartile range reaches across the threshold is within this run's timing noise.
    for chk, key, thr in ((checks[1], "lskip_tau1", TARGET_LSKIP_COST), (checks[2], "lskip_ddpm", TARGET_LSKIP_COST),
                          (checks[3] if len(checks) > 3 else None, "speedup", 1.0)):
        if chk is not None and key in ratios["iqr"]:
            lo, hi = ratios["iqr"][key]
            if lo <= thr <= hi:
                chk["result"] += f" (within timing noise: IQR {lo:.4f} to {hi:.4f} contains {thr})"
    if gpu and "gpu" in machine and "H100" not in machine["gpu"]:
        checks[0]["result"] += f" (device is {machine['gpu']}, not an H100: compare with care)"

    machine["loadavg_1min_at_end"] = _loadavg()
    out = {
        "what": "training images/s (lib/train.py step) of our UNet vs diffusers UNet2DModel, L_skip and CDM cost, "
                "DDIM sampling images/s, 50k-sample FID time",
        "targets": {"training_images_per_s_paper_unet_h100": TARGET_IMAGES_PER_S, "lskip_cost_max": TARGET_LSKIP_COST,
                    "ours_vs_unet2dmodel": "> 1"},
        "checks": checks,
        "config": {"profile": profile, "model": cfg.model.__dict__ | {"ch_mult": list(m.ch_mult),
                                                                       "attn_resolutions": list(m.attn_resolutions)},
                   "parameters_ours": n_ours, "parameters_unet2dmodel": n_diff,
                   "unet2dmodel_kwargs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in (dkw or {}).items()},
                   "batch": args.batch, "amp": amp, "channels_last": gpu, "fused_adam": gpu, "compile": args.compile,
                   "timed_steps_per_repeat": args.steps, "warmup_steps": args.warmup, "repeats": args.repeats,
                   "cudnn_benchmark": bool(gpu and args.cudnn_benchmark),
                   "loss": {"skip": cfg.loss.skip, "tau": cfg.loss.tau}, "grad_clip": tcfg.grad_clip,
                   "ema_decay": tcfg.ema_decay},
        "machine": machine, "git": git_state(), "date_utc": started.isoformat(timespec="seconds"),
        "elapsed_s": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "training": train, "ratios": ratios, "cdm": cdm_note or "measured (ours_cdm)", "sampling": sampling,
        "fid": fid_res, "notes": notes,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"train_speed_{device.type}"
    _atomic_text(stem.with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    md = render_md(out)
    _atomic_text(stem.with_suffix(".md"), md)
    print(md)
    print(f"wrote {stem}.json and .md")
    return out


def _atomic_text(path: Path, text: str):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt(x):
    return "n/a" if x is None else f"{x:.2f}"


def render_md(o) -> str:
    c, mc, s, f, r = o["config"], o["machine"], o["sampling"], o["fid"], o["ratios"]
    dev = mc.get("gpu") or mc["cpu"]
    versions = f"torch {mc['torch']}" + (f", CUDA {mc['cuda']}, cuDNN {mc['cudnn']}" if "cuda" in mc else "") + \
        (f", diffusers {mc['diffusers']}" if "diffusers" in mc else "")
    L = [f"# Training and sampling speed ({mc['device']})", "",
         f"`{o['command']}` on {o['date_utc']} ({o['elapsed_s']:.0f} s). Device: {dev}; CPU {mc['cpu']} "
         f"({mc['cpu_count']} cores, {mc['torch_threads']} torch threads); {versions}. Load average (1 min) "
         f"{_fmt(mc['loadavg_1min_at_start'])} at start, {_fmt(mc['loadavg_1min_at_end'])} at end "
         f"(other jobs on the machine slow every variant alike; the ratios are paired per repeat).", "",
         f"Model: the `{c['profile']}` profile's UNet, ours {c['parameters_ours']:,} parameters"
         + (f", diffusers UNet2DModel built the same way {c['parameters_unet2dmodel']:,}" if c["parameters_unet2dmodel"] else "")
         + f". Training step of lib/train.py (loss, backward, clip {c['grad_clip']}, Adam, EMA) at batch {c['batch']}, "
           f"amp {c['amp']}, channels_last {c['channels_last']}, fused Adam {c['fused_adam']}, compile {c['compile']}; "
           f"{c['warmup_steps']} warm-up steps, then {c['repeats']} interleaved repeats of {c['timed_steps_per_repeat']} "
           f"step(s) per variant (medians).", "",
         "## Targets", "", "| check | measured | result |", "|---|---|---|"]
    L += [f"| {k['check']} | {k['measured']} | {k['result']} |" for k in o["checks"]]
    L += ["", "## (a)-(c) Training", "", "| variant | images/s (median) | ms/step | runs (images/s) |"
          + (" peak GiB |" if any("peak_memory_gib_warmup" in v for v in o["training"].values()) else ""),
          "|---|---|---|---|" + ("---|" if any("peak_memory_gib_warmup" in v for v in o["training"].values()) else "")]
    for k, v in o["training"].items():
        L.append(f"| {k} | {v['images_per_s_median']:.1f} | {v['step_ms_median']:.1f} | "
                 + ", ".join(f"{x:.0f}" for x in v["images_per_s_runs"]) + " |"
                 + (f" {v['peak_memory_gib_warmup']:.2f} |" if "peak_memory_gib_warmup" in v else ""))
    L += ["", "Ratios (medians of per-repeat step-time ratios):", ""]
    iqr = r.get("iqr", {})

    def q(key, pct=True):
        if key not in iqr:
            return ""
        a, b = iqr[key]
        return f" (IQR {a:+.2%} to {b:+.2%})" if pct else f" (IQR {a:.3f} to {b:.3f})"
    L.append(f"- L_skip cost, step(τ=0.99) / step(τ=1) − 1: {r['lskip_cost_tau099_over_tau1']:+.2%}{q('lskip_tau1')} "
             f"(both draw ε′; target ≤ {o['targets']['lskip_cost_max']:.0%})")
    L.append(f"- S²-DM step / plain ddpm_loss step − 1: {r['lskip_cost_tau099_over_ddpm_loss']:+.2%}{q('lskip_ddpm')} "
             f"(the method's whole price: the ε′ draw and the L_skip arithmetic)")
    L.append(f"- step(τ=1, draws ε′) / step(ddpm_loss) − 1: {r['tau1_over_ddpm_loss']:+.2%}")
    L.append("- s2dm_loss evaluates L_skip at τ = 1 as well (with weight 0), so τ = 0.99 and τ = 1 do the same work: "
             "their ratio shows the timing noise floor of this run.")
    if "ours_speedup_over_diffusers" in r:
        L.append(f"- our UNet's speed / UNet2DModel's: {r['ours_speedup_over_diffusers']:.3f}×{q('speedup', False)}")
    L.append(f"- CDM step / baseline step: {r['cdm_step_over_baseline_step']:.2f}×{q('cdm', False)}"
             if "cdm_step_over_baseline_step" in r
             else f"- CDM: {o['cdm']}")
    L += ["", "## (d) Sampling", "",
          f"DDIM S = {s['steps']} (NFE {s['nfe']}), eval mode, no grad, {s['dtype']}, batch {s['batch']}: "
          f"**{s['images_per_s_median']:.1f} images/s** ({s['network_evals_per_s_median']:.0f} network evaluations/s); "
          f"50,000 samples at this S ≈ {s['time_50k_samples_s_estimate']:.0f} s (estimate, linear in the number of samples).",
          "", "## (e) 50k-sample FID", ""]
    if f["measured"]:
        L.append(f"clean-fid ({f['mode']}) on CIFAR-10-sized images, N = {f['sizes']}: {', '.join(f'{t:.1f} s' for t in f['seconds'])}. "
                 f"{f['formula']} → 50k: ≈ {f['time_50k_s_estimate']:.0f} s (extrapolated estimate), plus sampling (d).")
    else:
        L.append(f"{f['note']}" + (f" ({f['detail']}; weights expected at `{f['weights']}`, statistics at `{f['stats']}`)"
                                   if "weights" in f else ""))
    g = o.get("git") or {}
    if g.get("commit"):
        L += ["", f"Code: commit `{g['commit'][:12]}`" + (f"; files differing from it (measured as they were): "
                                                          f"{', '.join(g['lib_changes'])}" if g["lib_changes"] else "") + "."]
    if o["notes"]:
        L += ["", "Notes:", ""] + [f"- {n}" for n in o["notes"]]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
