"""The training runs of the experiment: where each lives, and training them as parallel processes.

* Image arms are trained with ``experiment.n_seeds`` seeds each; seed s of every arm is
  ``train.seed = s`` (lib.train seeds initial weights, data order and noise streams from it), so the
  arms of one seed differ only in the loss. Seed 0 lives in ``images/<arm>`` (as with one seed),
  seed s > 0 in ``images/<arm>-seed<s>``.
* Toy arms are trained with ``toy.n_seeds`` seeds each, in ``toy/<arm>-seed<s>``.
* The dose–response runs (lib.experiment.dose) are S²-DM at other loss strengths (skip, τ), arm name
  ``s2dm-k<skip>-t<τ>`` (e.g. ``images/s2dm-k99-t0.99-seed1``): seed s has the baseline's ``train.seed = s``
  and differs from the s2dm arm only in ``loss.skip``/``loss.tau``; and DDPM-IP at its doses γ
  (lib.experiment.shrinkers), ``ip-g<γ>``, the baseline's config with arm ``ip`` and ``loss.gamma``.

:func:`train_parallel` runs unfinished runs as worker calls of :func:`train_job`, at most ``experiment.workers`` (default ``os.cpu_count()``) at a time, each single-threaded
(lib.infra.processes; bench/seeds_speed.py measures what it buys).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lib.experiment import shrinkers
from lib.infra import checkpoint as ckpt
from lib.infra import processes
from lib.infra.config import Config, from_dict, toy_config, with_overrides
from lib.infra.paths import Paths
from lib.infra.progress import RunsProgress
from lib.recipe import PAPER_ARMS
from lib.train import train
from lib.experiment.workers import call_in_workers


# ---------------------------------------------------------------------------- where runs live
def image_run(paths: Paths, arm: str, seed: int = 0) -> Path:
    """The run directory of image arm ``arm``, training seed ``seed``."""
    return paths.run(f"images/{arm}" if seed == 0 else f"images/{arm}-seed{seed}")


def toy_run(paths: Paths, arm: str, seed: int) -> Path:
    return paths.run(f"toy/{arm}-seed{seed}")


def image_seeds(cfg: Config) -> range:
    """The image training seeds of the profile: 0 … experiment.n_seeds − 1."""
    return range(cfg.experiment.n_seeds)


def seed_config(cfg: Config, seed: int) -> Config:
    """``cfg`` with training seed ``seed`` (shared by every arm of that seed)."""
    return with_overrides(cfg, {"train.seed": seed})


def require_image_runs(paths: Paths, cfg: Config, arms=PAPER_ARMS) -> None:
    """Fail with the producing notebook's name when a trained image or toy run is missing."""
    for arm in arms:
        for s in image_seeds(cfg):
            paths.require(image_run(paths, arm, s) / "final.pt", "03_train")
        paths.require(toy_run(paths, arm, cfg.toy.n_seeds - 1) / "final.pt", "03_train")


# ---------------------------------------------------------------------------- training jobs
@dataclass(frozen=True)
class Job:
    """One training run: ``cfg`` (for a toy run, the output of :func:`lib.infra.config.toy_config`)."""

    cfg: Config
    arm: str
    out: Path
    toy: bool = False


def image_jobs(cfg: Config, paths: Paths, arms=PAPER_ARMS, seeds=None) -> dict:
    """{(arm, seed): Job} of the image arms."""
    seeds = image_seeds(cfg) if seeds is None else seeds
    return {(a, s): Job(seed_config(cfg, s), a, image_run(paths, a, s)) for s in seeds for a in arms}


def toy_jobs(cfg: Config, paths: Paths, arms=PAPER_ARMS) -> dict:
    """{(arm, seed): Job} of the toy arms."""
    return {(a, s): Job(seed_config(toy_config(cfg), s), a, toy_run(paths, a, s), toy=True)
            for s in range(cfg.toy.n_seeds) for a in arms}


def dose_arm(skip: int, tau: float) -> str:
    """The run name of S²-DM trained at loss strength (skip, τ)."""
    return f"s2dm-k{skip}-t{tau:g}"


def dose_settings(cfg: Config) -> list[tuple[int, float]]:
    """The dose–response loss strengths zip(experiment.dose_skip, experiment.dose_tau)."""
    return list(zip(cfg.experiment.dose_skip, cfg.experiment.dose_tau))


def dose_label(cfg: Config, skip: int, tau: float) -> str:
    """The arm that holds S²-DM at (skip, τ): the s2dm arm itself at the profile's loss, else :func:`dose_arm`."""
    return "s2dm" if (skip, tau) == (cfg.loss.skip, cfg.loss.tau) else dose_arm(skip, tau)


def dose_image_settings(cfg: Config) -> list[tuple[int, float]]:
    """The dose settings that also train as images (experiment.dose_image_settings)."""
    d = dose_settings(cfg)
    return [d[i] for i in cfg.experiment.dose_image_settings]


def dose_image_seeds(cfg: Config) -> range:
    """The image seeds of the dose–response runs: 0 … min(dose_image_seeds, n_seeds) − 1 (each needs its baseline)."""
    return range(min(cfg.experiment.dose_image_seeds, cfg.experiment.n_seeds))


def dose_jobs(cfg: Config, paths: Paths, image_variance: float | None = None) -> dict:
    """{("toy" | "images", arm, seed): Job} of the dose–response runs not already trained as the s2dm arm:
    the toy at every setting with toy.n_seeds seeds, images at the image settings; the config of seed s is
    the s2dm arm's of seed s with ``loss.skip``/``loss.tau`` replaced (same initial weights, data, noise).
    ``image_variance`` stands in for the images' σ² in the matched IP dose (a count of the runs without the
    data; its γ, and so its run name, is then not the one the data gives)."""
    jobs = {}
    for skip, tau in dose_settings(cfg):
        arm = dose_label(cfg, skip, tau)
        if arm == "s2dm":
            continue
        loss = {"loss.skip": skip, "loss.tau": tau}
        toy = with_overrides(toy_config(cfg), loss)
        for s in range(cfg.toy.n_seeds):
            jobs["toy", arm, s] = Job(seed_config(toy, s), "s2dm", toy_run(paths, arm, s), toy=True)
        if (skip, tau) in dose_image_settings(cfg):
            for s in dose_image_seeds(cfg):
                jobs["images", arm, s] = Job(with_overrides(seed_config(cfg, s), loss), "s2dm", image_run(paths, arm, s))
    for gamma in shrinkers.ip_doses(cfg, "toy"):  # DDPM-IP: the baseline's config with arm ip and loss.gamma
        toy = with_overrides(toy_config(cfg), {"loss.gamma": gamma})
        for s in range(cfg.toy.n_seeds):
            jobs["toy", shrinkers.ip_arm(gamma), s] = Job(seed_config(toy, s), "ip", toy_run(paths, shrinkers.ip_arm(gamma), s), toy=True)
    for gamma in shrinkers.ip_image_doses(cfg, image_variance):
        for s in dose_image_seeds(cfg):
            jobs["images", shrinkers.ip_arm(gamma), s] = Job(with_overrides(seed_config(cfg, s), {"loss.gamma": gamma}), "ip",
                                                            image_run(paths, shrinkers.ip_arm(gamma), s))
    return jobs


def require_dose_runs(paths: Paths, cfg: Config) -> None:
    """Fail with the producing notebook's name when a dose–response run is missing."""
    for job in dose_jobs(cfg, paths).values():
        paths.require(job.out / "final.pt", "03_train")


def is_finished(job: Job) -> bool:
    """The run holds final.pt and a checkpoint at (or past) its last step."""
    done = ckpt.list_checkpoints(job.out) if job.out.is_dir() else []
    return ((job.out / "final.pt").exists() and bool(done)
            and int(ckpt.CKPT_RE.match(done[-1].name).group(1)) >= job.cfg.train.steps)


def train_job(config: dict, arm: str, out: str) -> None:
    """One training run as a worker call (lib.experiment.workers.call_in_workers): ``train`` without a
    progress bar (RunsProgress follows every run's loss.csv instead)."""
    train(from_dict(config), arm, Path(out), progress=False)


def processes_per_run(cfg: Config) -> int:
    """``train.nproc`` processes per training run; 0: one per visible CUDA device (at least 1)."""
    if cfg.train.nproc:
        return cfg.train.nproc
    import torch

    return max(1, torch.cuda.device_count())


def train_parallel(jobs, workers: int = 0, progress: bool = True) -> dict:
    """Train every job of ``jobs`` ({key: Job}); returns {key: run_dir}.

    Finished runs are checked (config, arm) and skipped in this process; the others run as
    single-threaded worker processes, at most ``workers`` (0: ``os.cpu_count()``)
    at a time, longest first (lib.experiment.workers.call_in_workers). ``workers=1`` trains them here, one
    after another (profile ci: its runs take less time than a process takes to start). Runs whose
    ``train.nproc`` asks for several processes (profile paper: one per GPU) run through torchrun, one run
    at a time, and record the world size in their run.json. A failed run
    does not stop the others (their work is kept); at the end one error lists every failure with its
    run directory and the tail of its stderr."""
    jobs = dict(jobs)
    outs = [j.out.resolve() for j in jobs.values()]
    if len(set(outs)) != len(outs):  # two processes must never train into one directory
        raise ValueError("two training jobs share a run directory: " +
                         ", ".join(sorted({str(o) for o in outs if outs.count(o) > 1})))
    pending = []
    for key, job in jobs.items():
        if is_finished(job):
            train(job.cfg, job.arm, job.out, progress=False)  # checks config and arm, returns at once
        else:
            pending.append(key)
    pending.sort(key=lambda k: -jobs[k].cfg.train.steps * (0 if jobs[k].toy else 1))  # images first
    workers = processes.n_workers(workers, len(pending))
    t_start = time.time()
    if progress and pending:
        ddp = sum(processes_per_run(jobs[k].cfg) > 1 for k in pending)
        print(f"training {len(pending)} runs ({len(jobs) - len(pending)} already finished): "
              f"{len(pending) - ddp} {workers} at a time, one thread each" + (f"; {ddp} through torchrun" if ddp else ""),
              flush=True)
    watch = None
    if progress and pending and workers > 1:  # one display over every run: steps done / total, per run with its speed
        watch = RunsProgress({k: (_label(k, jobs[k]), jobs[k].out / "loss.csv", jobs[k].cfg.train.steps)
                              for k in pending}).update
    calls = {k: {"config": jobs[k].cfg.to_dict(), "arm": jobs[k].arm, "out": str(jobs[k].out.resolve())} for k in pending}
    describe = lambda k: f"{jobs[k].out} ({jobs[k].arm}, seed {jobs[k].cfg.train.seed})"  # noqa: E731
    failures = []
    for nproc in sorted({processes_per_run(jobs[k].cfg) for k in pending}):  # torchrun runs one at a time
        group = {k: c for k, c in calls.items() if processes_per_run(jobs[k].cfg) == nproc}
        if progress and nproc > 1:
            print(f"{len(group)} runs through torchrun, {nproc} processes each, one run at a time", flush=True)
        failures += call_in_workers(train_job, group, workers, progress=progress, describe=describe, watch=watch,
                                    nproc=nproc)[1]
    if watch is not None:
        watch(running=(), finished=[k for k in pending if is_finished(jobs[k])], final=True)
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(pending)} training runs failed (the others are kept; "
                           "run again to resume):\n" + "\n".join(failures))
    if progress and pending:
        print(f"trained {len(pending)} runs in {time.time() - t_start:.0f} s", flush=True)
    return {key: job.out for key, job in jobs.items()}


def _label(key, job: Job) -> str:
    """A run's name in the progress display: a dose run by its setting (its arm is s2dm), not as "s2dm"."""
    name = key[1] if isinstance(key, tuple) and len(key) == 3 and isinstance(key[1], str) else job.arm
    return f"{'toy' if job.toy else 'images'} {name} s{job.cfg.train.seed}"


def train_experiment(cfg: Config, paths: Paths, arms=PAPER_ARMS, progress: bool = True) -> tuple[dict, dict]:
    """Train (or resume, or skip) every toy and image run of notebook 03, with the dose–response runs
    (:func:`dose_jobs`), in one pool of processes; returns ({(arm, seed): toy run}, {(arm, seed): image
    run}) of ``arms``, and the dose runs under their :func:`dose_arm` names."""
    tj, ij = toy_jobs(cfg, paths, arms), image_jobs(cfg, paths, arms)
    done = train_parallel({**{("toy", *k): j for k, j in tj.items()}, **{("images", *k): j for k, j in ij.items()},
                           **dose_jobs(cfg, paths)}, cfg.experiment.workers, progress)
    return ({k[1:]: v for k, v in done.items() if k[0] == "toy"},
            {k[1:]: v for k, v in done.items() if k[0] == "images"})
