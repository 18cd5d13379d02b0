"""Training and sampling speed on one device, in one run: our UNet against diffusers' UNet2DModel.

    .venv/bin/python bench/train_speed.py               # CUDA: paper UNet, batch 128; CPU: cpu-profile UNet
    .venv/bin/python bench/train_speed.py --compile     # also torch.compile both networks
    .venv/bin/python bench/train_speed.py --profile paper --steps 2 --repeats 3   # the paper UNet on CPU (slow)

It times, interleaving the variants within each of ``--repeats`` repeats (medians; warm-up excluded;
the device synchronised around every timing): (a) training images/s with lib.train's ``train_step``
for our UNet and diffusers' ``UNet2DModel`` built as the same DDPM network; (b) L_skip's cost (τ = 0.99
against τ = 1 and against ddpm_loss); (c) a CDM step against the baseline's; (d) DDIM sampling images/s;
(e) a 50k-sample Inception FID, fitted as t(N) = a + b·N, if the weights are here. The targets
(≥ 6,300 images/s for the paper UNet on one H100, ahead of UNet2DModel, L_skip ≤ 3 %) are judged where
they apply. Results: bench/results/train_speed_<device>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from machine import cpu_model  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.infra import checkpoint as ckpt  # noqa: E402
from lib import data, samplers  # noqa: E402
from lib.infra.config import get_config  # noqa: E402
from lib.factory import build_model, schedule_of  # noqa: E402
from lib.losses import ddpm_loss  # noqa: E402
from lib.recipe import make_loss  # noqa: E402
from timing import StepVariant, sync  # noqa: E402  (bench/timing.py)
from unet2d_twin import DiffusersEps, diffusers_kwargs  # noqa: E402  (bench/unet2d_twin.py)

TARGET_IMAGES_PER_S = 6300  # paper CIFAR-10 UNet, one H100/H200, batch 128: ~30 % of the bf16 ceiling (docs/method.md §7)
TARGET_LSKIP_COST = 0.03  # L_skip may add at most 3 % to a training step
FID_N = 50_000


def _timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- batches
def batches_of(m, batch, device, *, channels_last, flip, seed=0):
    """``take(k)``: k training batches as lib.train makes them (gather from a uint8 set on the device, scale
    to [-1, 1], random flip), from random pixels (speed does not depend on the content)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (8 * batch, m.in_channels, m.resolution, m.resolution), generator=g,
                           dtype=torch.uint8).to(device)

    def one():
        idx = torch.randperm(len(images), generator=g)[:batch]
        x = data.training_batch(images[idx.to(device)], (torch.rand(batch, generator=g) < 0.5) if flip else None)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return lambda k: [one() for _ in range(k)]


# ---------------------------------------------------------------------------- measurements
def measure_training(variants, take, a, device):
    """Every repeat times ``a.steps`` steps of each variant in turn (order alternating); returns the
    per-variant medians and the per-repeat images/s."""
    out, runs = {}, {v.name: [] for v in variants}
    for v in variants:  # warm-up (allocator, cuDNN autotuning, compilation), and its peak memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        v.run(take(a.warmup))
        out[v.name] = {"peak_memory_gib_warmup": torch.cuda.max_memory_allocated(device) / 2**30} if device.type == "cuda" else {}
    for r in range(a.repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            runs[v.name].append(a.steps * a.batch / v.run(take(a.steps)))
        print(f"  repeat {r}: " + "  ".join(f"{k} {x[-1]:.1f}" for k, x in runs.items()), flush=True)
    for k, ips in runs.items():
        med = statistics.median(ips)
        out[k].update(images_per_s_median=med, step_ms_median=1e3 * a.batch / med, images_per_s_runs=ips)
    return out, runs


def ratio(runs, a, b):
    """Median and interquartile range of the per-repeat step-time ratios time_a / time_b."""
    r = [y / x for x, y in zip(runs[a], runs[b])]
    return statistics.median(r), (statistics.quantiles(r, n=4)[::2] if len(r) >= 2 else None)


@torch.no_grad()
def measure_sampling(model, schedule, m, a, device):
    model.eval()
    x_T = torch.randn((a.sample_batch, m.in_channels, m.resolution, m.resolution),
                      generator=torch.Generator(device=device).manual_seed(0), device=device)
    info = {}
    samplers.sample(model, x_T, schedule, a.sample_steps, "ddim", info=info)  # warm-up
    ts = [_timed(lambda: samplers.sample(model, x_T, schedule, a.sample_steps, "ddim"), device)
          for _ in range(a.sample_repeats)]
    med = statistics.median(ts)
    return {"method": "ddim", "steps": a.sample_steps, "nfe": info["nfe"], "batch": a.sample_batch, "dtype": "float32",
            "seconds_runs": ts, "images_per_s_median": a.sample_batch / med,
            "network_evals_per_s_median": a.sample_batch * info["nfe"] / med,
            "time_50k_samples_s_estimate": FID_N * med / a.sample_batch}


def measure_fid(a, device):
    """Time lib.measure.fid.inception_fid on two sample counts and extrapolate t = a + b·N to 50k."""
    from lib.measure import fid

    try:
        paths = fid.check_offline(a.fid_mode)
    except fid.FIDWeightsMissing as e:
        return {"measured": False, "note": f"not measured: weights missing ({str(e).splitlines()[0].rstrip('.:')})"}
    sizes, g = [int(s) for s in a.fid_n.split(",")][:2], torch.Generator().manual_seed(0)
    times = [_timed(lambda: fid.inception_fid(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                                              mode=a.fid_mode, device=device, batch_size=a.fid_batch), device)
             for n in sizes]
    b = (times[1] - times[0]) / (sizes[1] - sizes[0])
    return {"measured": True, "mode": a.fid_mode, "sizes": sizes, "seconds": times, "a_s": times[0] - b * sizes[0],
            "b_s_per_image": b, "time_50k_s_estimate": times[0] + b * (FID_N - sizes[0]), "paths": paths}


def machine_info(device) -> dict:
    info = {"device": str(device), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "loadavg_1min_at_start": os.getloadavg()[0]}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=p.total_memory / 2**30, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpu_count=torch.cuda.device_count())
    try:
        import diffusers
        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    info["commit"], info["changed"] = git("rev-parse", "HEAD"), git("status", "--porcelain", "--", "lib", "bench")
    return info


def checks(train, ratios, gpu, profile, batch, machine) -> list[dict]:
    """The issue's targets, judged where they apply; a verdict whose IQR spans the threshold says so."""
    ips, on_target = train["ours_s2dm"]["images_per_s_median"], gpu and profile == "paper" and batch == 128
    out = [{"check": f"training >= {TARGET_IMAGES_PER_S} images/s (paper UNet, batch 128, one H100)", "measured": round(ips, 1),
            "result": ("pass" if ips >= TARGET_IMAGES_PER_S else "FAIL") if on_target else
            f"n/a (applies to the paper UNet at batch 128 on an H100; this run: {profile} UNet on {machine['device']})"}]
    if on_target and "H100" not in machine.get("gpu", ""):
        out[0]["result"] += f" (device is {machine.get('gpu')}, not an H100: compare with care)"
    for key, what, thr, above in (
            ("lskip_cost_tau099_over_tau1", "L_skip costs <= 3% of a training step (tau=0.99 vs tau=1)", TARGET_LSKIP_COST, False),
            ("lskip_cost_tau099_over_ddpm_loss", "S2-DM step costs <= 3% more than a plain ddpm_loss step", TARGET_LSKIP_COST, False),
            ("ours_speedup_over_diffusers", "our UNet trains faster than UNet2DModel (same step, same device)", 1.0, True)):
        if key in ratios:
            v, iqr = ratios[key], ratios["iqr"].get(key)
            c = {"check": what, "measured": round(v, 4), "result": "pass" if (v > thr if above else v <= thr) else "FAIL"}
            if iqr and iqr[0] <= thr <= iqr[1]:
                c["result"] += f" (within timing noise: IQR {iqr[0]:.4f} to {iqr[1]:.4f} contains {thr})"
            out.append(c)
    return out


def render_md(o) -> str:
    mc, c, s, f, r = o["machine"], o["config"], o["sampling"], o["fid"], o["ratios"]
    L = [f"# Training and sampling speed ({mc['device']})", "",
         f"`{o['command']}` on {o['date_utc']} ({o['elapsed_s']:.0f} s). Device: {mc.get('gpu') or mc['cpu']}; "
         f"{mc['cpu_count']} cores, {mc['torch_threads']} torch threads; torch {mc['torch']}"
         + (f", diffusers {mc['diffusers']}" if "diffusers" in mc else "") + f"; commit `{mc['commit'][:12]}`. "
         f"Load average {mc['loadavg_1min_at_start']:.2f} at start, {mc['loadavg_1min_at_end']:.2f} at end.", "",
         f"Model: the `{c['profile']}` profile's UNet ({c['parameters_ours']:,} parameters"
         + (f"; UNet2DModel {c['parameters_unet2dmodel']:,}" if c["parameters_unet2dmodel"] else "")
         + f"). lib.train's train_step at batch {c['batch']}, amp {c['amp']}, channels_last/fused Adam {c['gpu_flags']}, "
           f"compile {c['compile']}; {c['warmup']} warm-up steps, {c['repeats']} interleaved repeats of {c['steps']} step(s).",
         "", "## Targets", "", "| check | measured | result |", "|---|---|---|"]
    L += [f"| {k['check']} | {k['measured']} | {k['result']} |" for k in o["checks"]]
    L += ["", "## (a)-(c) Training", "", "| variant | images/s (median) | ms/step | runs (images/s) |", "|---|---|---|---|"]
    L += [f"| {k} | {v['images_per_s_median']:.1f} | {v['step_ms_median']:.1f} | "
          + ", ".join(f"{x:.0f}" for x in v["images_per_s_runs"]) + " |" for k, v in o["training"].items()]
    L += ["", "Ratios (medians of per-repeat step-time ratios; IQR in brackets):", ""]
    L += [f"- {k}: {v:.4f}" + (f" [{r['iqr'][k][0]:.4f}, {r['iqr'][k][1]:.4f}]" if r["iqr"].get(k) else "")
          for k, v in r.items() if k != "iqr"]
    L += ["", "## (d) Sampling", "", f"DDIM S = {s['steps']} (NFE {s['nfe']}), float32, batch {s['batch']}: "
          f"**{s['images_per_s_median']:.1f} images/s**; 50,000 samples ≈ {s['time_50k_samples_s_estimate']:.0f} s.",
          "", "## (e) 50k-sample FID", "",
          (f"clean-fid ({f['mode']}), N = {f['sizes']}: {', '.join(f'{t:.1f} s' for t in f['seconds'])}; t(N) = "
           f"{f['a_s']:.2f} s + {f['b_s_per_image'] * 1e3:.4f} ms·N → 50k ≈ {f['time_50k_s_estimate']:.0f} s (extrapolated).")
          if f["measured"] else f["note"]]
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------- main
def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add("--profile", default="auto", help="model size: auto (paper on CUDA, cpu otherwise), ci, cpu, gpu, paper")
    add("--batch", type=int, default=128, help="training batch (default 128, the paper's)")
    add("--steps", type=int, default=None, help="timed steps per repeat and variant (default 20 CUDA, 1 CPU)")
    add("--warmup", type=int, default=None, help="warm-up steps per variant (default 10 CUDA, 3 CPU)")
    add("--repeats", type=int, default=None, help="interleaved repeats (default 7 CUDA, 15 CPU)")
    add("--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark (lib.train does not)")
    add("--compile", action="store_true", help="torch.compile both networks (warm-up includes compiling)")
    add("--amp", default="auto", choices=("auto", "none", "bf16"), help="auto: bf16 on CUDA, none on CPU")
    add("--no-diffusers", action="store_true", help="skip the UNet2DModel comparison")
    add("--sample-batch", type=int, default=500)
    add("--sample-steps", type=int, default=10)
    add("--sample-repeats", type=int, default=3)
    add("--fid-mode", default="legacy_tensorflow", choices=("legacy_tensorflow", "clean"))
    add("--fid-n", default=None, help="two sample counts for the FID fit (default 2000,5000 CUDA; 100,300 CPU)")
    add("--fid-batch", type=int, default=200)
    add("--skip-fid", action="store_true")
    add("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    add("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    gpu = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    # CPU: one step per block, many blocks (bursts of other jobs hit single blocks, the median drops them)
    a.device, a.profile = torch.device("cuda" if gpu else "cpu"), a.profile if a.profile != "auto" else ("paper" if gpu else "cpu")
    a.steps, a.warmup, a.repeats = a.steps or (20 if gpu else 1), a.warmup or (10 if gpu else 3), a.repeats or (7 if gpu else 15)
    a.fid_n, a.amp = a.fid_n or ("2000,5000" if gpu else "100,300"), a.amp if a.amp != "auto" else ("bf16" if gpu else "none")
    return a


def main(argv=None):
    a = parse(argv)
    device, gpu, started = a.device, a.device.type == "cuda", datetime.datetime.now(datetime.timezone.utc)
    torch.set_num_threads(a.threads or torch.get_num_threads())
    torch.backends.cudnn.benchmark = bool(gpu and a.cudnn_benchmark)
    cfg = get_config(a.profile)
    t = replace(cfg.train, batch_size=a.batch, amp=a.amp, channels_last=gpu, fused_adam=gpu, compile=a.compile)
    cfg, m, schedule, machine = replace(cfg, train=t), cfg.model, schedule_of(cfg), machine_info(device)
    nets = {"ours_s2dm": (lambda: build_model(m), "s2dm"), "ours_baseline_tau1": (lambda: build_model(m), "baseline"),
            "ours_ddpm_loss": (lambda: build_model(m), None), "ours_cdm": (lambda: build_model(m), "cdm")}
    if not a.no_diffusers and "diffusers" in machine:
        nets["diffusers_s2dm"] = (lambda: DiffusersEps(**diffusers_kwargs(m)), "s2dm")
    variants = []
    for name, (make, arm) in nets.items():
        torch.manual_seed(0)  # every network starts from the same seed
        loss = make_loss(cfg, arm, schedule) if arm else (lambda net, x0, g, parts: ddpm_loss(net, x0, schedule, generator=g))
        # lib.train's optimiser, EMA and autocast for this train section, stepped by train_step (bench/timing.py)
        variants.append(StepVariant(name, make(), loss, t, device, amp=t.amp, channels_last=t.channels_last,
                                    fused=t.fused_adam, compile_backend="inductor" if a.compile else None))
    n_params = {v.name: sum(q.numel() for q in v.model.parameters()) for v in variants}
    print(f"device {device}; profile {a.profile!r} UNet, parameters {n_params}; batch {a.batch}, amp {a.amp}", flush=True)
    train, runs = measure_training(variants, batches_of(m, a.batch, device, channels_last=gpu, flip=cfg.data.random_flip),
                                   a, device)
    pairs = {"lskip_cost_tau099_over_tau1": ("ours_s2dm", "ours_baseline_tau1", -1.0),
             "lskip_cost_tau099_over_ddpm_loss": ("ours_s2dm", "ours_ddpm_loss", -1.0),
             "tau1_over_ddpm_loss": ("ours_baseline_tau1", "ours_ddpm_loss", -1.0),
             "ours_speedup_over_diffusers": ("diffusers_s2dm", "ours_s2dm", 0.0),
             "cdm_step_over_baseline_step": ("ours_cdm", "ours_baseline_tau1", 0.0)}
    ratios = {"iqr": {}}
    for key, (x, y, shift) in pairs.items():
        if x in runs and y in runs:
            med, iqr = ratio(runs, x, y)
            ratios[key], ratios["iqr"][key] = med + shift, iqr and [q + shift for q in iqr]
    sampler_model = build_model(m).to(device)  # default layout, float32: what lib.generate loads
    sampler_model.load_state_dict(variants[0].model.state_dict())
    sampling = measure_sampling(sampler_model, schedule, m, a, device)
    fid_res = {"measured": False, "note": "not measured: --skip-fid"} if a.skip_fid else measure_fid(a, device)
    machine["loadavg_1min_at_end"] = os.getloadavg()[0]
    out = {"checks": checks(train, ratios, gpu, a.profile, a.batch, machine), "machine": machine,
           "config": {"profile": a.profile, "parameters_ours": n_params["ours_s2dm"],
                      "parameters_unet2dmodel": n_params.get("diffusers_s2dm"), "batch": a.batch, "amp": a.amp,
                      "gpu_flags": gpu, "compile": a.compile, "steps": a.steps, "warmup": a.warmup, "repeats": a.repeats,
                      "loss": {"skip": cfg.loss.skip, "tau": cfg.loss.tau}, "grad_clip": t.grad_clip, "ema_decay": t.ema_decay},
           "date_utc": started.isoformat(timespec="seconds"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "elapsed_s": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(),
           "training": train, "ratios": ratios, "sampling": sampling, "fid": fid_res}
    stem = Path(a.out) / f"train_speed_{device.type}"
    ckpt.atomic_write_text(stem.with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    ckpt.atomic_write_text(stem.with_suffix(".md"), render_md(out))
    print(render_md(out) + f"wrote {stem}.json and .md")
    return out


if __name__ == "__main__":
    main()
