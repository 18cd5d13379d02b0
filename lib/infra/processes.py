"""A pool of single-threaded worker processes: how the experiment uses several cores.

On a small machine shared with other jobs, k one-thread processes keep k cores busy with no
synchronisation between threads, where one k-thread process loses much of its speed to contention
(bench/seeds_speed.py measures it). Each command runs with OMP_NUM_THREADS=1 from the repository
root, with this repository first on PYTHONPATH.

The experiment fans work out through lib.experiment.workers on top of :func:`run_parallel`; a job's
config and output root travel in one encoding, :func:`job_context`.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

from lib.infra.paths import ROOT, Paths


@contextlib.contextmanager
def single_thread():
    """One intra-op torch thread inside the block (then the previous count): the in-process
    counterpart of a worker. Small tensors (the 2-D toy, ci sizes) gain nothing from threads but
    synchronisation and, on a busy 2-core machine, contention."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


PATH_OPTIONS = ("--out", "--run-dir", "--root")  # the options of this project's commands that name paths


def worker_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


def n_workers(requested: int, n_jobs: int) -> int:
    """``requested`` (0: os.cpu_count()), at most one per job, at least 1."""
    return max(1, min(requested or os.cpu_count() or 1, n_jobs or 1))


def run_parallel(commands: dict, workers: int, progress: bool = True, describe=str, watch=None) -> list[str]:
    """Run {key: argv} with at most ``workers`` at a time, in the given order. A failure does not stop
    the others; returns one message per failed command (``describe(key)``, exit code, stderr tail).
    ``watch(running=keys, finished=keys)`` is called while waiting (e.g. progress.RunsProgress.update).
    Workers run from the repository root: every path in a command must be absolute (the caller
    resolves it, e.g. lib.infra.paths.Paths), or it would name another folder than the caller's."""
    for key, argv in commands.items():  # workers run from the repository: a relative path would move
        rel = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in PATH_OPTIONS and not os.path.isabs(argv[i + 1])]
        if rel:
            raise ValueError(f"{key}: the worker command's path {rel[0]!r} is relative; resolve it in the caller "
                             f"(lib.infra.paths.Paths does) so that the worker writes where the caller reads")
    queue, running, failures, finished = list(commands), {}, [], []
    env = worker_env()
    while queue or running:
        while queue and len(running) < workers:
            key = queue.pop(0)
            err = tempfile.TemporaryFile()
            running[key] = (subprocess.Popen(commands[key], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err),
                            err, time.time())
        time.sleep(0.2)
        for key in [k for k, (p, _, _) in running.items() if p.poll() is not None]:
            p, err, t0 = running.pop(key)
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-15:]
            err.close()
            if p.returncode != 0:
                failures.append(f"{describe(key)} exited with {p.returncode}:\n    " + "\n    ".join(tail))
            else:
                finished.append(key)
                if progress and watch is None:
                    print(f"  {describe(key)}: {time.time() - t0:.0f} s", flush=True)
        if watch is not None:
            watch(running=list(running), finished=finished)
    return failures


# ---------------------------------------------------------------------------- one fan-out mechanism
def job_context(cfg, paths: Paths) -> dict:
    """What a worker needs to rebuild the caller's config and output root: the config as
    ``Config.to_dict()`` and the root already resolved (absolute) in the caller."""
    return {"config": cfg.to_dict(), "profile": paths.profile, "root": str(paths.base)}


def job_context_of(config: dict, profile: str, root: str):
    """The (Config, Paths) that :func:`job_context` encoded."""
    from lib.infra.config import from_dict

    return from_dict(config), Paths(profile, Path(root))
