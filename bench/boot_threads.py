"""Why lib.measure.metrics runs the FD bootstrap on one thread: replicates per second at 1 and 2 torch
threads, on an idle machine and beside one busy-looping process, at FD_clf's feature size.

    python bench/boot_threads.py [--dim 64] [--n 500] [--reps 200]

Writes bench/results/boot_threads.{json,md}. Each setting times ``--reps`` bootstrap replicates (the
loop of lib.measure.metrics._boot_fds) and checks the FDs are bit-identical across thread counts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/machine.py)
from lib.measure.metrics import _FDToReference  # noqa: E402


def replicates(fd_ref, f: torch.Tensor, reps: int, threads: int) -> tuple[float, np.ndarray]:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = np.empty(reps)
    t0 = time.perf_counter()
    for b in range(reps):
        out[b] = fd_ref(f[torch.from_numpy(rng.integers(0, len(f), len(f)))])
    return reps / (time.perf_counter() - t0), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--reps", type=int, default=200)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    fd_ref = _FDToReference(rng.normal(size=(5000, a.dim)))
    f = torch.from_numpy(rng.normal(size=(a.n, a.dim)) + 0.1)
    res = {"dim": a.dim, "n": a.n, "reps": a.reps, "cpu": cpu_model(), "cores": os.cpu_count(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()[0]}
    fds = {}
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for threads in (1, 2):
                rate, fds[busy, threads] = replicates(fd_ref, f, a.reps, threads)
                res[f"{'busy' if busy else 'idle'}_{threads}_threads_per_s"] = rate
        finally:
            if hog:
                hog.kill()
    res["bit_identical"] = all(np.array_equal(fds[False, 1], v) for v in fds.values())
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "boot_threads.json").write_text(json.dumps(res, indent=2))
    lines = [f"# FD bootstrap replicates per second ({a.dim}-dim features, {a.n} samples, {a.reps} replicates; "
             f"{res['cpu']}, {res['cores']} cores, torch {res['torch']}, {res['date']}, load {res['load_before']:.1f} before)",
             "", "| machine | 1 thread | 2 threads | 1 thread / 2 threads |", "|---|---|---|---|"]
    for m in ("idle", "busy"):
        one, two = res[f"{m}_1_threads_per_s"], res[f"{m}_2_threads_per_s"]
        lines.append(f"| {m if m == 'idle' else 'beside one busy-looping process'} | {one:.0f} | {two:.0f} | {one / two:.1f}x |")
    lines += ["", f"FDs bit-identical across thread counts and load: {res['bit_identical']}"]
    (out / "boot_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
