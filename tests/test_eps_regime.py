"""bench/eps_regime.py's analysis on synthetic per-seed numbers: the best λ, Holm within a (length, steps)
family, the verdicts and the report, without training or sampling anything."""
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as when run as a script: bench/machine.py beside it
    spec = importlib.util.spec_from_file_location("eps_regime", ROOT / "bench" / "eps_regime.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eps_regime"] = mod
    spec.loader.exec_module(mod)
    return mod


def _cells(mod, effect, seeds=range(4), lengths=(2000, 4000), steps=(10,), lambdas=(0.99, 1.01)):
    """KID(1) = 10 (length 2000) or 8 (4000) plus seed noise; KID(λ) = KID(1)·(1 + effect(L, λ)/100 + noise), the
    noise of the λ cells ±0.2–0.3 % with mean 0 over the 4 seeds (so a null cell has p = 1, whatever the draw)."""
    rng = np.random.default_rng(0)
    wiggle = [0.003, -0.003, 0.002, -0.002]
    cells = {}
    for s in seeds:
        for L in lengths:
            for S in steps:
                base = (10.0 if L == 2000 else 8.0) + rng.normal(0, 0.3)
                for i, lam in enumerate((1.0, *lambdas)):
                    k = base if lam == 1.0 else base * (1 + effect(L, lam) / 100 + (-1) ** i * wiggle[s])
                    cells[mod.cell_key(s, L, S, lam)] = {"KID": k, "FD_clf": 3 * k}
    return cells


def test_a_clear_gain_is_found_and_held_to_holm(monkeypatch):
    mod = _bench(monkeypatch)
    effect = lambda L, lam: -5.0 if (L == 4000 and lam == 1.01) else 0.0  # noqa: E731
    an = mod.analyse(_cells(mod, effect), range(4), [2000, 4000], [10], [0.99, 1.01])
    rows = {(r["length"], r["lambda"]): r for r in an["rows"]}
    assert rows[4000, 1.01]["helps"] and rows[4000, 1.01]["pct"]["hi"] < 0
    assert not rows[2000, 1.01]["helps"] and not rows[2000, 0.99]["helps"]
    for r in an["rows"]:  # Holm within a family of 2: never below the raw p, at most twice it
        assert r["pct"]["p"] <= r["p_holm"] <= min(1.0, 2 * r["pct"]["p"]) + 1e-12
    best = {b["length"]: b for b in an["best"]}
    assert best[4000]["lam"] == 1.01 and best[4000]["helps"]
    assert an["answer"]["any_helps"] and an["answer"]["helps"] == [(4000, 10, 1.01)]
    assert an["answer"]["asks_longer"]  # the gain grows with length (and KID falls 10 -> 8)


def test_no_effect_gives_no_and_an_mde(monkeypatch):
    mod = _bench(monkeypatch)
    an = mod.analyse(_cells(mod, lambda L, lam: 0.0), range(4), [2000, 4000], [10], [0.99, 1.01])
    assert not an["answer"]["any_helps"]
    lo, hi = an["answer"]["mde_pct_range"]
    assert 0 < lo <= hi and an["answer"]["mde_pct_holm_first_range"][0] >= lo
    res = {"argv": [], "date": "d", "machine": "m", "wall_s": 60.0, "wall_this_s": 60.0, "invocations": 1, "load": [0.0, 0.0],
           "args": {"profile": "cpu", "seeds": 4, "lengths": [2000, 4000], "lambdas": [0.99, 1.01], "steps": [10]},
           "design": {"overrides": [], "resolution": 16, "batch": 64, "lr": 1e-3, "warmup": 100, "ema_decay": 0.999,
                      "ema_rampup": 0.05, "ckpt_every": 2000, "n_samples": 500, "sample_seed": 1234, "n_boot": 1000,
                      "metric": "width 16", "params": 1},
           "lr_reads_steps": False, "steps_resumable": True, "equivalence": None, "final_vs_last_ckpt": {"0": 0.0},
           "seconds_per_step": 0.1, "analysis": an}
    md = mod.report(res)
    assert "**No.**" in md and "not run" in md
