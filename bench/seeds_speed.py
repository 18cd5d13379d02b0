"""What training the image seeds as parallel single-threaded processes buys, measured on pieces.

    python bench/seeds_speed.py [--steps 200] [--profile cpu]

Trains the profile's image arm for ``--steps`` steps (a few hundred, not the profile's 3,000) in four
layouts and records images/s: one process with 2 threads, one with 1 thread, two one-thread
processes at once (lib.experiment.runs.train_parallel), and one thread with ``train.compile=true`` (wall time
includes compilation). Then DDIM sampling throughput with 1 and 2 threads. The extrapolation to a
full ``make reproduce`` is labelled as such. Writes bench/results/seeds_speed_<profile>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/machine.py)
from lib.experiment import runs  # noqa: E402
from lib.infra.config import get_config, with_overrides  # noqa: E402
from lib.infra.runlog import read_log  # noqa: E402


def _images_per_s(run_dir) -> float:
    v = read_log(run_dir)["images_per_s"][1:]  # the first window holds start-up (and compilation)
    return sorted(v)[len(v) // 2] if v else float("nan")


def train_serial(profile: str, overrides: dict, out: Path, threads: int) -> dict:
    """``python -m lib.train`` of the profile's baseline with ``overrides``, in a process of ``threads`` threads."""
    cfg = with_overrides(get_config(profile), overrides)
    cmd = [sys.executable, "-m", "lib.train", "--profile", profile, "--arm", "baseline", "--out", str(out), "--quiet"]
    cmd += [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "images_per_s": _images_per_s(out), "wall_images_per_s": cfg.train.steps * cfg.train.batch_size / wall}


def train_two(cfg, base: Path) -> dict:
    jobs = {s: runs.Job(runs.seed_config(cfg, s), "baseline", base / f"seed{s}") for s in (0, 1)}
    t0 = time.perf_counter()
    runs.train_parallel(jobs, workers=2, progress=False)
    wall = time.perf_counter() - t0
    per = [_images_per_s(j.out) for j in jobs.values()]
    return {"wall_s": wall, "images_per_s": sum(per), "per_process": per,
            "wall_images_per_s": 2 * cfg.train.steps * cfg.train.batch_size / wall}


def sample_speed(cfg, threads: int, n: int = 250, steps: int = 10) -> float:
    import torch

    from lib import generate
    from lib.factory import build_model, schedule_of

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    shape = (cfg.model.in_channels, cfg.model.resolution, cfg.model.resolution)
    generate.generate(model, schedule_of(cfg), shape, 50, num_steps=2, batch_size=50, progress=False)  # warm-up
    t0 = time.perf_counter()
    generate.generate(model, schedule_of(cfg), shape, n, num_steps=steps, batch_size=n, progress=False)
    return n * steps / (time.perf_counter() - t0)  # network evaluations per second (images)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args()
    over = {"train.steps": a.steps, "train.ckpt_every": a.steps, "train.log_every": max(1, a.steps // 5)}
    cfg = with_overrides(get_config(a.profile), over)
    res = {"profile": a.profile, "steps": a.steps, "batch": cfg.train.batch_size, "cpu": cpu_model(),
           "cores": os.cpu_count(), "python": platform.python_version(),
           "load_before": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res["train_1proc_2threads"] = train_serial(a.profile, over, tmp / "t2", 2)
        res["train_1proc_1thread"] = train_serial(a.profile, over, tmp / "t1", 1)
        res["train_2proc_1thread"] = train_two(cfg, tmp / "p2")
        res["train_1thread_compile"] = train_serial(a.profile, {**over, "train.compile": True}, tmp / "c1", 1)
    res["ddim_evals_per_s_1thread"] = sample_speed(cfg, 1)
    res["ddim_evals_per_s_2threads"] = sample_speed(cfg, 2)
    res["load_after"] = os.getloadavg()[0]
    full = get_config(a.profile)
    n_img = 2 * full.experiment.n_seeds * full.train.steps * full.train.batch_size
    est = {k: n_img / res[k]["images_per_s"] for k in ("train_1proc_2threads", "train_2proc_1thread")}
    res["extrapolated_image_training_s"] = {
        "note": f"EXTRAPOLATED from {a.steps}-step runs: 2 arms x {full.experiment.n_seeds} seeds x {full.train.steps} "
                f"steps x batch {full.train.batch_size} / measured images/s (toy runs and start-up not included)",
        "serial_2threads": est["train_1proc_2threads"], "parallel_2x1thread": est["train_2proc_1thread"]}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"seeds_speed_{a.profile}.json").write_text(json.dumps(res, indent=2))
    lines = [f"# Training seeds in parallel ({a.profile}, {a.steps} steps, {res['cpu']}, {res['cores']} cores, "
             f"{res['date']}; load {res['load_before']:.1f} before, {res['load_after']:.1f} after)", "",
             "| layout | images/s (loss.csv median) | images/s (wall, incl. start-up) |", "|---|---|---|"]
    for k in ("train_1proc_2threads", "train_1proc_1thread", "train_2proc_1thread", "train_1thread_compile"):
        lines.append(f"| {k} | {res[k]['images_per_s']:.0f} | {res[k]['wall_images_per_s']:.0f} |")
    lines += ["", f"DDIM network evaluations/s (batch 250): 1 thread {res['ddim_evals_per_s_1thread']:.0f}, "
                  f"2 threads {res['ddim_evals_per_s_2threads']:.0f}", "",
              f"{res['extrapolated_image_training_s']['note']}: serial 2-thread "
              f"{est['train_1proc_2threads']:.0f} s, parallel 2 x 1-thread {est['train_2proc_1thread']:.0f} s"]
    (out / f"seeds_speed_{a.profile}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
