"""What the EMA ramp-up does to the seed-to-seed spread of one arm's sample quality.

    python bench/ema_spread.py [--profile cpu] [--seeds 3] [--key train.ema_rampup] [--off V] [--on V] [--steps N]

Trains the baseline arm with ``--seeds`` training seeds under two values of one config key (default:
``train.ema_rampup``, "off" = the ``paper`` profile's value, the plain EMA; "on" = the profile's own
value), as parallel single-threaded processes (lib.experiment.runs), then measures FD_clf (or FID) of DDIM at
10 and 20 steps for every seed from the EMA weights and reports each setting's spread over seeds
(sd, max/min). Runs whose setting equals the profile's reuse notebook 03's runs when they are
finished; the others live under ``data/runs/<profile>/ema-study/``. ``--steps`` shortens training
(the result is then labelled as such). Writes bench/results/ema_spread_<profile>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (bench/machine.py)
from lib import generate  # noqa: E402
from lib.experiment import runs  # noqa: E402
from lib.infra.config import ConfigError, get_config, with_overrides  # noqa: E402
from lib.experiment.evaluate import ImageEvaluator, image_cell  # noqa: E402
from lib.infra.paths import Paths  # noqa: E402


def _value(cfg, key):
    sec, name = key.split(".")
    return getattr(getattr(cfg, sec), name)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--key", default="train.ema_rampup")
    p.add_argument("--off", default=None, help="the value without ramp-up (default: the paper profile's)")
    p.add_argument("--on", default=None, help="the value with ramp-up (default: this profile's)")
    p.add_argument("--steps", type=int, default=0, help="train this many steps instead of the profile's")
    p.add_argument("--root", default=None, help="output root instead of the repository")
    a = p.parse_args()
    cfg = get_config(a.profile)
    try:
        off = a.off if a.off is not None else _value(get_config("paper"), a.key)
        on = a.on if a.on is not None else _value(cfg, a.key)
        settings = {"off": with_overrides(cfg, {a.key: off}), "on": with_overrides(cfg, {a.key: on})}
    except (AttributeError, ConfigError, ValueError) as e:
        print(f"error: cannot vary {a.key!r} ({e}); this config has no such key yet (train.ema_rampup comes with "
              f"the EMA ramp-up of lib.train) - pass --key/--off/--on for another key", file=sys.stderr)
        return 2
    if _value(settings["off"], a.key) == _value(settings["on"], a.key):
        print(f"error: {a.key} is {on!r} in both settings; pass --on or --off", file=sys.stderr)
        return 2
    if a.steps:
        settings = {k: with_overrides(c, {"train.steps": a.steps, "train.ckpt_every": a.steps}) for k, c in settings.items()}
    P = Paths(a.profile, Path(a.root) if a.root else None)
    seeds = range(a.seeds)
    jobs = {}
    for name, c in settings.items():
        for s in seeds:
            reuse = c.to_dict() == cfg.to_dict()  # the profile itself: notebook 03's runs
            out = (runs.image_run(P, "baseline", s) if reuse
                   else P.run(f"ema-study/{a.key}={_value(c, a.key)}/baseline-seed{s}"))
            jobs[name, s] = runs.Job(runs.seed_config(c, s), "baseline", out)
    t0 = time.time()
    done = runs.train_parallel(jobs, cfg.experiment.workers)
    ev = ImageEvaluator(cfg, P, progress=False)
    res = {"profile": a.profile, "key": a.key, "off": str(_value(settings["off"], a.key)),
           "on": str(_value(settings["on"], a.key)), "train_steps": settings["on"].train.steps,
           "shortened": bool(a.steps), "n_samples": cfg.sample.n_samples, "cpu": cpu_model(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "cells": {}}
    for (name, s), run in done.items():
        model, _ = generate.load_model(run, ev.device)
        for S in (10, 20):
            r = image_cell(ev, model, cfg, f"ema-{name}", "ddim", S, seed=s, progress=False)
            res["cells"].setdefault(f"{name} S={S}", []).append(r[ev.name])
    res["seconds"] = round(time.time() - t0)
    rows = []
    for k, v in res["cells"].items():
        v = np.array(v)
        rows.append(f"| {k} | {' / '.join(f'{x:.3g}' for x in v)} | {v.mean():.3g} | {v.std(ddof=1) if len(v) > 1 else float('nan'):.3g} | "
                    f"{v.max() / v.min():.2f} |")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ema_spread_{a.profile}.json").write_text(json.dumps(res, indent=2))
    md = [f"# {ev.name} of the baseline over {a.seeds} training seeds: {a.key} = {res['off']} (off) vs {res['on']} (on)",
          "", f"profile {a.profile}, {res['train_steps']} training steps{' (SHORTENED)' if a.steps else ''}, DDIM, "
          f"{cfg.sample.n_samples} samples per cell, EMA weights; {res['cpu']}, {res['date']}, {res['seconds']} s", "",
          "| setting | per seed | mean | sd | max/min |", "|---|---|---|---|---|", *rows]
    (out / f"ema_spread_{a.profile}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
