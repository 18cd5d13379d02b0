"""Training: both arms through one path, resume bit for bit (also after SIGKILL), atomic and
verified checkpoints, clear errors on bad configuration and non-finite losses."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lib.infra import checkpoint as ckpt
from lib import recipe
from lib import train as T
from lib.infra.runlog import read_log
from lib.infra.config import ConfigError, get_config, toy_config, with_overrides

ROOT = Path(__file__).resolve().parents[1]


def toy(**over):
    cfg = toy_config(get_config("ci"))
    return with_overrides(cfg, over) if over else cfg


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_image_run_writes_its_files_and_resumes_bit_for_bit(tmp_path):
    cfg = with_overrides(get_config("ci"), {"train.steps": 6, "train.ckpt_every": 2, "train.log_every": 2})
    full = T.train(cfg, "s2dm", tmp_path / "full", progress=False)
    for f in ("config.json", "run.json", "loss.csv", "final.pt", "ckpt-00000006.pt"):
        assert (tmp_path / "full" / f).exists(), f
    # stop after 4 steps (as if killed after the step-4 checkpoint), then resume to 6
    T.train(with_overrides(cfg, {"train.steps": 4}), "s2dm", tmp_path / "part", progress=False)
    T.train(cfg, "s2dm", tmp_path / "part", progress=False)
    assert same_state(ckpt.safe_load(full), ckpt.safe_load(tmp_path / "part" / "final.pt"))
    log = read_log(tmp_path / "part")
    assert log["step"] == [2, 4, 6] and all(v > 0 for v in log["loss"])


def test_baseline_and_s2dm_differ_only_in_the_loss(tmp_path):
    cfg = toy(**{"train.steps": 5})
    a = ckpt.safe_load(T.train(cfg, "baseline", tmp_path / "b", progress=False))
    b = ckpt.safe_load(T.train(with_overrides(cfg, {"loss.tau": 1.0}), "s2dm", tmp_path / "s", progress=False))
    assert same_state(a, b)  # s2dm with τ = 1 *is* the baseline: same data, t, noise and weights
    c = ckpt.safe_load(T.train(cfg, "s2dm", tmp_path / "s2", progress=False))
    assert not same_state(a, c)


def test_sigkill_at_any_moment_then_resume_gives_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "lib.train", "--profile", "ci", "--toy", "--arm", "s2dm", "--quiet",
            "--set", "train.steps=600", "--set", "train.ckpt_every=25"]
    subprocess.run(args + ["--out", str(tmp_path / "ref")], env=env, check=True, cwd=ROOT, capture_output=True)
    p = subprocess.Popen(args + ["--out", str(tmp_path / "kill")], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.list_checkpoints(tmp_path / "kill") and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "kill" / "final.pt").exists(), "the run finished before it could be killed"
    r = subprocess.run(args + ["--out", str(tmp_path / "kill")], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert same_state(ckpt.safe_load(tmp_path / "ref" / "final.pt"), ckpt.safe_load(tmp_path / "kill" / "final.pt"))


def test_corrupt_checkpoint_is_named_and_resume_falls_back(tmp_path):
    cfg = toy(**{"train.steps": 20})
    ref = ckpt.safe_load(T.train(cfg, "s2dm", tmp_path / "ref", progress=False))
    run = tmp_path / "run"
    T.train(with_overrides(cfg, {"train.steps": 15}), "s2dm", run, progress=False)  # ckpts at 10, 15
    newest = ckpt.list_checkpoints(run)[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # a torn file
    with pytest.raises(ckpt.CheckpointError, match=newest.name):
        ckpt.safe_load(newest)
    with pytest.warns(UserWarning, match="falling back"):
        T.train(cfg, "s2dm", run, progress=False)
    assert same_state(ref, ckpt.safe_load(run / "final.pt"))


def test_checkpoints_are_atomic_and_retained(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, {"a": torch.zeros(3)}, keep=2)
    boom = RuntimeError("disk full")

    def failing_save(obj, f):
        f.write(b"partial")
        raise boom
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, {"a": torch.ones(3)}, keep=2)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000001.pt"]  # no torn or temp file left
    for s in (2, 3, 4):
        ckpt.save_checkpoint(tmp_path, s, {"a": torch.ones(3)}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000003.pt", "ckpt-00000004.pt"]


def test_nonfinite_loss_stops_with_step_and_last_good_checkpoint(tmp_path, monkeypatch):
    real = recipe.make_loss

    def poisoned(cfg, arm, schedule):
        fn, calls = real(cfg, arm, schedule), []

        def loss_fn(model, x0, g, parts):
            calls.append(1)
            out = fn(model, x0, g, parts)
            return out * float("nan") if len(calls) == 13 else out
        return loss_fn
    monkeypatch.setattr(recipe, "make_loss", poisoned)
    with pytest.raises(T.NonFiniteLoss, match=r"step 13.*ckpt-00000010\.pt"):
        T.train(toy(**{"train.steps": 30, "train.ckpt_every": 10}), "s2dm", tmp_path, progress=False)
    assert not (tmp_path / "final.pt").exists()


def test_finished_run_is_not_redone_and_other_configs_are_refused(tmp_path):
    cfg = toy(**{"train.steps": 4})
    final = T.train(cfg, "s2dm", tmp_path, progress=False)
    mtime = final.stat().st_mtime_ns
    assert T.train(cfg, "s2dm", tmp_path, progress=False) == final and final.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="different configuration.*loss.tau"):
        T.train(with_overrides(cfg, {"loss.tau": 0.5}), "s2dm", tmp_path, progress=False)
    with pytest.raises(ConfigError, match="arm 's2dm'"):
        T.train(cfg, "baseline", tmp_path, progress=False)


def test_cli_errors_are_clear(tmp_path, capsys):
    assert T.main(["--profile", "laptop", "--arm", "s2dm", "--out", str(tmp_path)]) == 2
    assert "valid profiles: ci, cpu, gpu, paper" in capsys.readouterr().err
    assert T.main(["--profile", "ci", "--arm", "s2dm", "--out", str(tmp_path), "--set", "loss.tau=2"]) == 2
    assert "tau must lie in [0, 1]" in capsys.readouterr().err
    cifar = ["--set", "data.dataset=cifar10", "--set", "model.in_channels=3", "--set", "model.out_ch=3",
             "--set", "data.image_size=8", "--set", "data.root=" + str(tmp_path)]
    assert T.main(["--profile", "ci", "--arm", "s2dm", "--out", str(tmp_path / "run")] + cifar) == 2
    err = capsys.readouterr().err
    assert "cifar" in err.lower() and str(tmp_path) in err and "Traceback" not in err


class _OldEMA:
    """The EMA as it was before the ramp-up (lerp towards the weights by 1 - decay): the reference."""

    def __init__(self, model, decay):
        self.decay, self.shadow = decay, {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.float(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)


def _drift(model, g):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_ema_without_rampup_is_the_plain_ema_bit_for_bit():
    from lib.factory import build_model

    model = build_model(toy().model)
    new, old, g = recipe.EMA(model, 0.999, rampup=0.0), _OldEMA(model, 0.999), torch.Generator().manual_seed(0)
    for _ in range(25):
        _drift(model, g)
        new.update(model)
        old.update(model)
    assert same_state(new.state_dict(), old.shadow)
    assert all(new.beta(n) == 0.999 for n in (1, 10, 10**6))


def test_ema_rampup_follows_edms_half_life_rule():
    import math

    from lib.factory import build_model

    model = build_model(toy().model)
    decay, r = 0.999, 0.05
    ema, g = recipe.EMA(model, decay, rampup=r), torch.Generator().manual_seed(1)
    ref = {k: v.clone().double() for k, v in ema.state_dict().items()}
    for n in range(1, 41):
        _drift(model, g)
        ema.update(model)
        h = min(math.log(0.5) / math.log(decay), r * n)  # half-life in steps: at most r x the steps so far
        beta = 0.5 ** (1 / h)
        assert ema.beta(n) == pytest.approx(beta, rel=1e-12)
        for k, v in model.state_dict().items():
            ref[k] = beta * ref[k] + (1 - beta) * v.double()
    assert all(torch.allclose(ema.state_dict()[k].double(), ref[k], atol=1e-5) for k in ref)
    assert ema.beta(10**6) == pytest.approx(decay)  # late in a long run: the plain EMA again
    assert ema.beta(1) < 1e-5  # the first update all but replaces the random initial weights


def test_ema_rampup_resumes_bit_for_bit(tmp_path):
    cfg = toy(**{"train.steps": 6, "train.ckpt_every": 2, "train.ema_rampup": 0.05})
    full = ckpt.safe_load(T.train(cfg, "s2dm", tmp_path / "full", progress=False))
    T.train(with_overrides(cfg, {"train.steps": 4}), "s2dm", tmp_path / "part", progress=False)
    assert same_state(full, ckpt.safe_load(T.train(cfg, "s2dm", tmp_path / "part", progress=False)))
    plain = ckpt.safe_load(T.train(with_overrides(cfg, {"train.ema_rampup": 0.0}), "s2dm", tmp_path / "p", progress=False))
    assert not same_state(full, plain)


def test_short_profiles_ramp_the_ema_in_and_long_ones_do_not():
    from lib.infra.config import get_config as gc
    assert (gc("ci").train.ema_rampup, gc("cpu").train.ema_rampup) == (0.05, 0.05)
    assert (gc("gpu").train.ema_rampup, gc("paper").train.ema_rampup) == (0.0, 0.0)
