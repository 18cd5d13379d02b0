"""The one way the experiment fans work out to worker processes: training runs (lib.experiment.runs),
image cells (lib.experiment.sweep), the related-methods cells (lib.experiment.related_sweep) and the
dose–response cells (lib.experiment.dose).

:func:`call_in_workers` calls one of :data:`WORKER_FUNCTIONS` once per job, with JSON keyword
arguments (a config and an output root as lib.infra.processes.job_context), each call in a
single-threaded worker (``python -m lib.experiment.worker_main CALL.json``, run by
lib.infra.processes.run_parallel), or in this process with one worker. A call file names a function
of that fixed table, never an arbitrary one: no data file can run code.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from lib.infra import processes

PATH_ARGS = ("out", "run_dir", "root")  # the keyword arguments of a worker call that name paths


# Every function a worker may call (lib.experiment.worker_main imports them; its table must equal this one).
WORKER_FUNCTIONS = ("lib.experiment.runs:train_job", "lib.experiment.sweep:group_job",
                    "lib.experiment.related_sweep:phase_job", "lib.experiment.dose:seed_job")


def _name(fn) -> str:
    name = f"{fn.__module__}:{getattr(fn, '__name__', fn)}"
    if name not in WORKER_FUNCTIONS:
        raise ValueError(f"{name} is not a worker function; add it to lib.experiment.workers.WORKER_FUNCTIONS "
                         "and lib.experiment.worker_main")
    return name


def call_in_workers(fn, calls: dict, workers: int, *, progress: bool = True, describe=str,
                    watch=None, nproc: int = 1) -> tuple[dict, list[str]]:
    """Call ``fn`` once per entry of ``calls`` ({key: keyword arguments}), at most ``workers`` at a time
    (0: os.cpu_count()), each in its own single-threaded worker process; with one worker, here, one
    after another, under lib.infra.processes.single_thread.

    Arguments and return values travel as JSON both ways (so the two paths see the same inputs); path
    arguments (``out``, ``run_dir``, ``root``) must be absolute. Returns ({key: return value} of the
    calls that finished, [one message per failed worker]); in this process an exception propagates.
    ``watch`` as in lib.infra.processes.run_parallel.

    ``nproc`` > 1: each call runs under torchrun as ``nproc`` processes (one distributed job: every rank
    calls ``fn``, rank 0 writes the result), one call at a time, since each job takes every device."""
    name = _name(fn)
    try:
        calls = {k: json.loads(json.dumps(kw)) for k, kw in calls.items()}
    except TypeError as e:
        raise TypeError(f"the arguments of {name} must be JSON: {e}") from None
    for key, kw in calls.items():  # workers run from the repository: a relative path would move
        rel = [str(kw[a]) for a in PATH_ARGS if kw.get(a) is not None and not os.path.isabs(str(kw[a]))]
        if rel:
            raise ValueError(f"{describe(key)}: the worker's path {rel[0]!r} is relative; resolve it in the caller "
                             f"(lib.infra.paths.Paths does) so that the worker writes where the caller reads")
    n = 1 if nproc > 1 else processes.n_workers(workers, len(calls))
    if n == 1 and nproc <= 1:
        with processes.single_thread():
            return {k: json.loads(json.dumps(fn(**kw))) for k, kw in calls.items()}, []
    with tempfile.TemporaryDirectory() as tmp:
        files, commands = {}, {}
        for i, (key, kw) in enumerate(calls.items()):
            files[key] = Path(tmp) / f"{i}.json"
            files[key].write_text(json.dumps({"function": name, "kwargs": kw, "out": f"{files[key]}.out"}))
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
                if nproc > 1 else [sys.executable]
            commands[key] = [*launch, "-m", "lib.experiment.worker_main", str(files[key])]
        failures = processes.run_parallel(commands, n, progress, describe, watch)
        done = {k: Path(f"{f}.out") for k, f in files.items()}
        return {k: json.loads(f.read_text()) for k, f in done.items() if f.exists()}, failures
