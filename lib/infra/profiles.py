"""Every number a profile sets, side by side: ``paper``, ``gpu``, ``cpu`` and ``ci`` (README.md: Profiles).

A profile is a set of ``section.key`` settings over the configuration schema's defaults, which are the
paper's recipe (lib.infra.config holds the schema, its parsing and validation; ``get_config(name)``
builds and checks the profile). Plain data, as nanoGPT's ``config/*.py`` files: no code to read
through to find a value. Beside the profiles, notebook 08's plan per profile (:data:`NOTEBOOK_08`).
"""
from __future__ import annotations

from dataclasses import dataclass

# The DDPM CIFAR-10 model (35,746,307 parameters) and the DDIM code's optimiser, in float32 as the paper;
# channels_last and fused Adam change speed, not the arithmetic. device='cuda' fails fast instead of
# silently training on a CPU (override with --set train.device=cpu).
# experiment.workers 1: the experiment's steps run one at a time in the notebook's process, because worker
# processes would all share cuda:0 (os.cpu_count() of them: 16 CUDA contexts and 6 image runs at batch 128
# competing for one GPU's memory); paper's training runs use every GPU through torchrun instead (train.nproc 0).
PAPER = {"train.channels_last": True, "train.fused_adam": True, "train.device": "cuda", "train.nproc": 0,
         "experiment.workers": 1}

# Plain EMA (ema_rampup 0) as the paper: 40k steps are 4x 1/(1 - 0.9999), the initial weights keep
# 0.9999^40000 = 1.8 % of the average (alike in both arms), and this profile is meant to differ from the
# paper's recipe in length and speed flags only.
GPU = {**PAPER, "train.nproc": 1,  # one GPU
       "train.steps": 40_000, "train.ckpt_every": 2000, "train.amp": "bf16",
       "sample.n_samples": 10_000, "sample.batch_size": 1000, "sample.steps": (10, 20, 50, 100, 1000),
       "experiment.n_seeds": 3}

# MNIST-5k at 16x16 with a small UNet (267k parameters), and the 2-D toy with 5 seeds per arm (measured
# wall time: docs/profiles.md). The full sweep's 4 samplers x 3 step counts cost ~350 network evaluations
# per sample per (seed, arm), hence 500 samples per cell and the full sweep on 3 seeds only; the 100-step
# row (410 more evaluations, exploratory cells) was cut so that the DDPM-IP runs and the 6-seed control
# fit the budget (bench/results/seed_budget_cpu.md, section 4). Notebook 06 (experiment.related_*, cdm_*, rho_*,
# es_*) is chosen to fit a few minutes on 2 cores per seed.
# model.norm_groups 4: one GroupNorm group count for every layer (widths 16 and 32, >= 4 channels per group),
# so diffusers' UNet2DModel, which takes one count, can hold an exported cpu or ci run (lib.pretrained export).
CPU = {"model.in_channels": 1, "model.out_ch": 1, "model.resolution": 16, "model.ch": 16, "model.ch_mult": (1, 2, 2),
       "model.norm_groups": 4, "model.num_res_blocks": 1, "model.attn_resolutions": (), "model.dropout": 0.0,
       "data.dataset": "mnist", "data.image_size": 16, "data.random_flip": False,
       # 2,000 steps are 2x 1/(1 - ema_decay), the EMA ramped in (EDM's ratio 0.05; docs/method.md §8.2):
       # down from 3,000 so that 6 seeds per arm and the dose runs fit the budget (bench/results/seed_budget_cpu.md).
       "train.steps": 2000, "train.batch_size": 64, "train.lr": 1e-3, "train.warmup": 100, "train.ema_decay": 0.999,
       "train.ema_rampup": 0.05, "train.ckpt_every": 500, "train.log_every": 50,
       "sample.n_samples": 500, "sample.batch_size": 250, "sample.steps": (10, 20, 50),
       # 1,000 bootstrap replicates per interval: seconds on saved features (bench/results/seed_budget_cpu.md).
       "eval.metric": "classifier", "eval.n_boot": 1000, "eval.classifier_steps": 1000, "eval.classifier_width": 16,
       "toy.n_seeds": 5, "toy.steps": 2000, "toy.batch_size": 512, "toy.n_samples": 5000,
       # 6 seeds for the headline cells (DDIM 10/20: TOST power at ±3.27 %), the full sweep on 3
       # (bench/seed_budget.py: power and predicted wall time of this design).
       "experiment.n_seeds": 6, "experiment.sweep_seeds": 3, "experiment.headline_steps": (10, 20),
       # The confirmatory family (declared before the data): the two 6-seed cells; the sweep's other 14 are exploratory.
       "experiment.primary": ("ddim-10", "ddim-20"),
       # Notebook 06: the neighbours on seeds 0–2; the dose images at skip 99, τ 0.99 only (the budget).
       "experiment.related_seeds": 3, "experiment.dose_image_settings": (2,),
       # The constant-ε-scaling control on every baseline seed (KID at sample.n_samples).
       "experiment.control_seeds": 6,
       "experiment.related_steps": (10, 20), "experiment.related_n_samples": 250,
       "experiment.related_toy_samples": 1000, "experiment.cdm_finetune": 100, "experiment.cdm_toy_finetune": 100,
       "experiment.cdm_chain_steps": 2, "experiment.related_rho_top": (1.0, 0.98), "experiment.related_rho_bottom": (1.0, 0.95, 0.9, 0.8),
       "experiment.related_es_b": (1.002, 1.005, 1.01, 1.02), "experiment.related_es_k": (-0.02, 0.02)}

# Tiny everything: the notebooks must run end to end in a few minutes on 2 cores.
CI = {"model.in_channels": 1, "model.out_ch": 1, "model.resolution": 8, "model.ch": 16, "model.ch_mult": (1, 2),
      "model.norm_groups": 4, "model.num_res_blocks": 1, "model.attn_resolutions": (4,), "model.dropout": 0.0,
      "data.dataset": "digits", "data.image_size": 8, "data.random_flip": False,
      "train.steps": 40, "train.batch_size": 32, "train.lr": 1e-3, "train.ema_decay": 0.9, "train.ema_rampup": 0.05,
      "train.ckpt_every": 20, "train.log_every": 10,
      "sample.n_samples": 64, "sample.batch_size": 64, "sample.steps": (5, 10),
      "eval.metric": "classifier", "eval.n_boot": 20, "eval.classifier_steps": 100, "eval.classifier_width": 8,
      "toy.n_seeds": 2, "toy.steps": 100, "toy.batch_size": 256, "toy.hidden": 32, "toy.n_samples": 500,
      "toy.sample_steps": (5, 10),
      "experiment.n_seeds": 2, "experiment.sweep_seeds": 1, "experiment.headline_steps": (5,), "experiment.workers": 1,
      "experiment.related_steps": (5, 10), "experiment.cdm_finetune": 6, "experiment.cdm_toy_finetune": 20,
      "experiment.cdm_chain_steps": 2, "experiment.related_rho_top": (1.0, 0.9), "experiment.related_rho_bottom": (1.0, 0.8),
      "experiment.related_es_b": (1.005, 1.02), "experiment.related_es_k": (0.02,),
      "experiment.dose_skip": (9, 99), "experiment.dose_tau": (0.99, 0.99), "experiment.dose_image_settings": (1,), "experiment.dose_ip_match": 1,
      "experiment.dose_image_seeds": 2, "experiment.control_lambdas": (0.99, 1.01), "experiment.control_seeds": 2}

PROFILE_SETTINGS = {"ci": CI, "cpu": CPU, "gpu": GPU, "paper": PAPER}


# ---------------------------------------------------------------------------- notebook 08
@dataclass(frozen=True)
class NotebookPlan:
    """What notebook 08 runs at a profile. ``source`` None: the profile's own trained baseline (notebook 03).

    ``finetune_steps`` per arm (gpu: sized to about one GPU-hour per arm, an estimate: docs/GPU.md);
    ``skip_tuning`` (ρ_top, ρ_bottom) and ``eps_scale`` b are fixed illustrative settings (notebook 06
    tunes them on a separate sample set); ``n_samples`` None keeps the profile's ``sample.n_samples``."""

    source: str | None
    steps: tuple
    n_samples: int | None
    finetune_steps: int
    finetune_lr: float | None = None
    skip_tuning: tuple = (1.0, 0.95)
    eps_scale: float = 1.005


NOTEBOOK_08 = {
    "ci": NotebookPlan(source=None, steps=(5, 10), n_samples=None, finetune_steps=10),
    "cpu": NotebookPlan(source=None, steps=(10, 20), n_samples=250, finetune_steps=200),
    "gpu": NotebookPlan(source="ema_cifar10", steps=(10, 20, 50, 100), n_samples=10_000, finetune_steps=20_000,
                        finetune_lr=2e-5),
    "paper": NotebookPlan(source="ema_cifar10", steps=(10, 20, 50, 100), n_samples=50_000, finetune_steps=100_000,
                          finetune_lr=2e-5),
}


# ---------------------------------------------------------------------------- the rehearsal
# scripts/rehearse.py runs the gpu/paper notebooks through their own code paths with these sizes only
# (training steps, batch, samples, seeds and the seeds that run the full sweep, sampler step counts (4 and 5:
# divisors of T, so the uniform grid has S steps), bootstrap replicates, notebook 08's plan, notebook 02's
# Monte Carlo draws as at ci, the model's width with the paper's 32 GroupNorm groups kept), on fixtures made
# on the spot, within minutes on 2 CPU cores. No number a rehearsal writes is a result (REHEARSAL.md beside its tables).
REHEARSAL_SIZES = {
    "model.ch": 32, "model.norm_groups": 32,
    "train.steps": 16, "train.batch_size": 8, "train.ckpt_every": 8, "train.log_every": 4,
    "sample.n_samples": 12, "sample.batch_size": 12, "sample.steps": (4, 5),
    "eval.n_boot": 50,
    "toy.n_seeds": 2, "toy.steps": 60, "toy.batch_size": 128, "toy.n_samples": 400, "toy.sample_steps": (4, 5),
    "experiment.n_seeds": 2, "experiment.sweep_seeds": 1, "experiment.related_steps": (4, 5), "experiment.related_seeds": 2,
    "experiment.related_n_samples": 8, "experiment.related_toy_samples": 300, "experiment.cdm_finetune": 4,
    "experiment.cdm_toy_finetune": 10, "experiment.cdm_chain_steps": 2, "experiment.dose_image_seeds": 1,
    "experiment.control_seeds": 1,
}
# What each profile adds: paper trains every run through torchrun (two processes over gloo on a CPU).
REHEARSAL_PROFILE_SIZES = {"gpu": {}, "paper": {"train.nproc": 2}}
# Notebook 08's plan in a rehearsal (carried by the manifest, lib.infra.rehearsal).
REHEARSAL_NOTEBOOK_08 = {"steps": (4, 5), "n_samples": 8, "finetune_steps": 4}
