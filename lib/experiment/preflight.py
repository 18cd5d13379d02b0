"""The preflight of a GPU run (scripts/preflight.py, first step of ``make reproduce PROFILE=gpu|paper``):
everything the profile will need, checked in seconds, and the plan with its estimated hours, so that what
would fail at hour 5 fails at minute 0.

Checks: the CUDA device and its memory, the torch build, CIFAR-10, clean-fid's Inception weights and
reference statistics, notebook 08's ``ema_cifar10`` checkpoint and its published MD5, free disk for the
runs and samples at the profile's sizes. Each missing item is one line naming where it goes and the
command that puts it there. The plan counts notebooks, training runs, sample sets and network
evaluations; its hours come from the rates ``bench/results/gpu_speed_<device>.json`` measured on this
device where there is one, else from FLOPs at an assumed throughput (labelled an estimate). In a
rehearsal (``experiment.rehearsal``) the fixtures of its manifest stand in for the files.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lib import readers, samplers
from lib.infra import rehearsal
from lib.infra.config import Config
from lib.infra.paths import ROOT

FETCH = "make fetch PROFILE={profile} (on a machine with network; docs/GPU.md lists the manual steps)"
# The paper UNet's forward pass at 32×32 (torch.utils.flop_counter, docs/GPU.md); other widths and
# resolutions scale it by (ch/128)² (res/32)².
PAPER_FORWARD_FLOP = 12.44e9
ASSUMED_FLOPS = 150e12  # an achieved rate for the estimate where nothing was measured (about 20 % of an H100's bf16)
GIB = 1 << 30


@dataclass
class Preflight:
    problems: list = field(default_factory=list)
    facts: list = field(default_factory=list)

    def need(self, ok: bool, problem: str, fact: str = ""):
        if ok and fact:
            self.facts.append(fact)
        elif not ok:
            self.problems.append(problem)
        return ok


def forward_flop(cfg: Config) -> float:
    m = cfg.model
    return PAPER_FORWARD_FLOP * (m.ch / 128) ** 2 * (m.resolution / 32) ** 2


def check_device(pf: Preflight, cfg: Config, dry_run: bool) -> None:
    import torch

    wants_cuda = cfg.train.device in ("cuda", "auto")
    pf.facts.append(f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (a CPU-only build)'}")
    if not wants_cuda:
        pf.facts.append(f"train.device={cfg.train.device}: no CUDA device needed")
        return
    if dry_run and not torch.cuda.is_available():
        pf.facts.append("CUDA: none here (--dry-run lists only)")
        return
    if not pf.need(torch.version.cuda is not None, "CUDA: this torch build has no CUDA support; install the CUDA build "
                   "of the pinned torch (make torch TORCH_INDEX=cuda) or the machine's own PyTorch with CUDA"):
        return
    if not pf.need(torch.cuda.is_available(), "CUDA: no CUDA device is visible (nvidia-smi; CUDA_VISIBLE_DEVICES); "
                   "the gpu/paper profiles train on CUDA (train.device=cuda)"):
        return
    n = torch.cuda.device_count()
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        pf.need(p.total_memory >= 16 * GIB, f"CUDA: {p.name} has {p.total_memory / GIB:.0f} GiB; the paper UNet at batch "
                f"{cfg.train.batch_size} needs about 16 GiB (lower train.batch_size)",
                f"CUDA device {i}: {p.name}, {p.total_memory / GIB:.0f} GiB")
    if cfg.train.nproc > n:
        pf.problems.append(f"train.nproc={cfg.train.nproc} but {n} CUDA device(s) are visible; set train.nproc=0 (one per device)")


def check_files(pf: Preflight, cfg: Config, profile: str, root: Path, manifest) -> None:
    from lib import pretrained, readers
    from lib.experiment import pretrained_study
    from lib.measure import fid

    fetch = FETCH.format(profile=profile)
    if cfg.data.dataset == "cifar10":
        folder = readers.cifar10_folder(readers.resolve_root(cfg.data.root))
        try:
            x, _ = readers.load_cifar10(readers.resolve_root(cfg.data.root))
            pf.facts.append(f"CIFAR-10: {len(x):,} training images in {folder}")
        except readers.DatasetUnreadable as e:
            pf.problems.append(f"{e}")
        except readers.DatasetMissing:
            pf.problems.append(f"CIFAR-10 is not in {folder} (the python-version batches data_batch_1..5 and "
                               f"test_batch): {fetch}")
    if cfg.eval.metric == "inception":
        name = fid.stats_filename(cfg.data.dataset, cfg.eval.fid_mode, cfg.data.image_size, "train")
        if manifest is not None:
            try:
                pf.facts.append(f"feature network: {fid.network_id(cfg.eval.fid_mode, manifest)}; statistics "
                                f"{manifest.stats_path(name)}")
            except rehearsal.ManifestError as e:
                pf.problems.append(f"rehearsal statistics: {e}")
        else:
            w = Path(fid.INCEPTION_DIR) / fid.INCEPTION_FILE
            pf.need(w.is_file(), f"the Inception weights {fid.INCEPTION_FILE} are not at {w} (clean-fid reads them "
                    f"there): {fetch}", f"Inception weights: {w}")
            s = Path(fid.STATS_DIR) / name
            pf.need(s.is_file(), f"the Inception statistics {name} are not at {s} (clean-fid's stats folder): {fetch}",
                    f"Inception statistics: {s}")
    plan = pretrained_study.plan_for(profile, cfg)
    if plan.source:
        try:
            st_path, nm = pretrained.resolve(plan.source, root, manifest)
            md5 = pretrained.expected_md5(nm, manifest)
            got = pretrained.file_md5(st_path)
            pf.need(md5 is None or got == md5, f"{plan.source}: {st_path} has MD5 {got}, not the published {md5}: delete "
                    f"it and run {fetch}", f"{plan.source}: {st_path} (MD5 {got} verified)")
        except (pretrained.PretrainedMissing, pretrained.PretrainedError) as e:
            pf.problems.append(f"{plan.source} (notebook 08's weights): {e}; or run {fetch}")


def plan(cfg: Config, profile: str, paths) -> dict:
    """Runs, sample sets, network evaluations and bytes of notebooks 03 and 04 at the profile's sizes
    (06, 07 and 08 are counted as a share of 04's evaluations: docs/GPU.md)."""
    from lib.experiment import runs, sweep

    import tempfile

    from lib.infra.paths import Paths

    with tempfile.TemporaryDirectory() as tmp:  # the jobs' names only: the preflight writes nothing under the root
        scratch = Paths(profile, tmp)
        try:
            dose = runs.dose_jobs(cfg, scratch)
        except readers.DatasetMissing:  # named by check_files; the matched IP dose's σ² needs the data,
            dose = runs.dose_jobs(cfg, scratch, image_variance=1.0)  # the count of runs does not
        jobs = {**runs.image_jobs(cfg, scratch), **dose}
    image_jobs = [j for j in jobs.values() if not j.toy]
    train_images = sum(j.cfg.train.steps * j.cfg.train.batch_size for j in image_jobs)
    cells = [(m, S) for s in runs.image_seeds(cfg) for m, S in sweep.seed_cells(cfg, cfg.sample.methods, cfg.sample.steps, s)]
    nfe = 2 * sum(samplers.nfe(m, S, cfg.sample.grid) for m, S in cells) * cfg.sample.n_samples  # two arms
    fwd = forward_flop(cfg)
    from lib.factory import build_model
    import torch

    with torch.device("meta"):
        n_params = sum(p.numel() for p in build_model(cfg.model).parameters())
    ckpt_bytes = 4 * n_params * 4  # model, EMA and Adam's two moments, float32
    sample_bytes = (2 * len(cells) * cfg.sample.n_samples * (cfg.model.in_channels * cfg.model.resolution ** 2 + 2048 * 4)
                    + 50_000 * 2048 * 4 * 2)  # uint8 samples and float32 features; the reference features twice
    return {"runs": len(image_jobs), "train_images": train_images, "train_flop": 3 * fwd * train_images,
            "cells": 2 * len(cells), "samples": 2 * len(cells) * cfg.sample.n_samples,
            "sample_flop": fwd * nfe * 1.6,  # 06, 07 and 08: about 0.6 of 04's evaluations (docs/GPU.md)
            "disk_bytes": len(image_jobs) * ckpt_bytes * (cfg.train.keep_ckpts + 1) + sample_bytes,
            "params": n_params}


def measured_rates(device_name: str | None) -> dict | None:
    """Training and sampling images/s measured on this device by bench/gpu_speed.py, if committed."""
    if not device_name:
        return None
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    f = ROOT / "bench" / "results" / f"gpu_speed_{slug}.json"
    try:
        secs = json.loads(f.read_text())["sections"]
    except (OSError, ValueError, KeyError):
        return None
    variants = secs.get("training", {}).get("measurements", {}).get("variants", {})
    ours = [v["images_per_s"] for v in variants.values() if v.get("kind") == "ours" and v.get("images_per_s")]
    ddim = secs.get("sampling", {}).get("measurements", {}).get("ddim10_lib_generate", {})
    if not ours:
        return None
    return {"file": f.relative_to(ROOT), "train_images_per_s": max(ours),
            "sample_nfe_per_s": 10 * ddim["images_per_s"] if ddim.get("images_per_s") else None}


def run(profile: str, cfg: Config, root: Path | None, *, dry_run: bool = False) -> tuple[bool, list[str]]:
    """(ready, report lines) of the preflight at ``profile`` with ``cfg``; ``root`` the output root."""
    import torch

    from lib.infra.paths import Paths

    manifest = rehearsal.of(cfg)
    paths = Paths(profile, root)
    pf = Preflight()
    check_device(pf, cfg, dry_run)
    check_files(pf, cfg, profile, Path(root) if root else ROOT, manifest)
    pl = plan(cfg, profile, paths)
    free = shutil.disk_usage(paths.base if paths.base.exists() else ROOT).free
    pf.need(free >= pl["disk_bytes"], f"disk: {free / GIB:.1f} GiB free under {paths.base}, the profile writes about "
            f"{pl['disk_bytes'] / GIB:.1f} GiB (runs and sample sets): free space or choose another root",
            f"disk: {free / GIB:.0f} GiB free, about {pl['disk_bytes'] / GIB:.1f} GiB needed")
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    rates = measured_rates(name)
    if rates:
        train_h = pl["train_images"] / rates["train_images_per_s"] / 3600
        sample_h = (pl["sample_flop"] / forward_flop(cfg)) / rates["sample_nfe_per_s"] / 3600 if rates["sample_nfe_per_s"] \
            else pl["sample_flop"] / ASSUMED_FLOPS / 3600
        how = f"at the rates measured on this device ({rates['file']})"
    else:
        train_h, sample_h = pl["train_flop"] / ASSUMED_FLOPS / 3600, pl["sample_flop"] / ASSUMED_FLOPS / 3600
        how = (f"an estimate from FLOPs at an assumed {ASSUMED_FLOPS / 1e12:.0f} TFLOP/s (no bench/results/gpu_speed "
               f"file for {'this device' if name else 'a CUDA device here'}; make gpu-check measures one)")
    lines = [f"preflight of profile {profile}" + (" (rehearsal)" if manifest else "") + (" (dry run)" if dry_run else "")]
    lines += [f"  ok: {f}" for f in pf.facts]
    lines += [f"  MISSING: {p}" for p in pf.problems]
    lines += [f"plan: notebooks 01-08; {pl['runs']} image training runs ({pl['params']:,} parameters, "
              f"{pl['train_images']:,} training images), {pl['cells']} sample sets of notebook 04 "
              f"({pl['samples']:,} samples), notebooks 06-08 beside them",
              f"  hours: training {train_h:.2f}, sampling and metrics {sample_h:.2f} ({how})"]
    return not pf.problems, lines
