"""Multi-process training and sampling through torchrun: 2 CPU processes on the gloo backend.

One module-scoped set of runs (the 2-D toy model of profile ci, a few hundred steps) serves every
test: an uninterrupted 2-process run, a 2-process run whose processes are SIGKILLed after its first
checkpoint and that is then relaunched, and a sample set generated with 1 and with 2 processes.
The launches dominate the time (each process imports torch), so independent launches overlap.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lib.infra import checkpoint as ckpt
from lib import generate

ROOT = Path(__file__).resolve().parents[1]
STEPS, CKPT_EVERY = 200, 20
N_SAMPLES, BATCH = 300, 64  # 5 batches: rank 0 takes 3, rank 1 takes 2 (an uneven split)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds worker processes via /proc")


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "S2DM_DDP_BACKEND": "gloo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TRAIN = ["-m", "lib.train", "--profile", "ci", "--toy", "--arm", "s2dm", "--quiet",
         "--set", f"train.steps={STEPS}", "--set", f"train.ckpt_every={CKPT_EVERY}"]
GEN = ["-m", "lib.generate", "--method", "ddim", "--steps", "10", "--set", "eta=0.5",  # η > 0: noise per batch too
       "--num-samples", str(N_SAMPLES), "--batch-size", str(BATCH), "--seed", "3", "--quiet"]


def _popen(args, **kw):
    return subprocess.Popen(args, env=_env(), cwd=ROOT, text=True, **kw)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (torchrun starts its workers in sessions of their own, so
    killing torchrun alone would leave them running)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _finish(p: subprocess.Popen, timeout=240):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"{p.args} failed ({p.returncode}):\n{err[-3000:]}"
    return out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    ref = _popen(TORCHRUN + TRAIN + ["--out", str(d / "ref")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victim = _popen(TORCHRUN + TRAIN + ["--out", str(d / "kill")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not ckpt.list_checkpoints(d / "kill") and time.time() < deadline and victim.poll() is None:
            time.sleep(0.01)
        workers = _children(victim.pid)
        for pid in workers:  # a crash of the whole job: every worker dies at once, mid-step
            os.kill(pid, signal.SIGKILL)
        victim_rc = victim.wait(timeout=60)  # torchrun must notice and exit, not hang
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    killed = SimpleNamespace(workers=len(workers), rc=victim_rc, finished=(d / "kill" / "final.pt").exists(),
                             ckpts=[p.name for p in ckpt.list_checkpoints(d / "kill")])
    ref_out, ref_err = _finish(ref)
    resumed = _popen(TORCHRUN + TRAIN + ["--out", str(d / "kill")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # sampling from the finished reference run, 2 processes and 1 (no torchrun), beside the resumption
    gen2 = _popen(TORCHRUN + GEN + ["--run-dir", str(d / "ref"), "--out", str(d / "gen2.pt")],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gen1 = _popen([sys.executable] + GEN + ["--run-dir", str(d / "ref"), "--out", str(d / "gen1.pt")],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    res_out, res_err = _finish(resumed)
    gen2_out, _ = _finish(gen2)
    gen1_out, _ = _finish(gen1)
    return SimpleNamespace(dir=d, ref=d / "ref", kill=d / "kill", ref_out=ref_out, killed=killed,
                           res_err=res_err, gen1_out=gen1_out, gen2_out=gen2_out)


def test_two_process_run_finishes_and_rank0_writes_every_file_once(runs):
    r = runs.ref
    assert runs.ref_out.split() == [str(r / "final.pt")]  # printed by rank 0 only
    run = json.loads((r / "run.json").read_text())
    assert run["world_size"] == 2 and run["device"] == "cpu"
    keep = json.loads((r / "config.json").read_text())["train"]["keep_ckpts"]
    steps = [int(ckpt.CKPT_RE.match(p.name).group(1)) for p in ckpt.list_checkpoints(r)]
    assert steps == list(range(STEPS - CKPT_EVERY * (keep - 1), STEPS + 1, CKPT_EVERY))
    assert not [p.name for p in r.iterdir() if p.name.endswith(".tmp")]  # no torn or stray files
    # one loss row per logged step: a second writer would have appended each row twice
    logged = [int(line.split(",")[0]) for line in (r / "loss.csv").read_text().splitlines()[1:]]
    assert logged == sorted(set(logged)) and logged[-1] == STEPS
    state = ckpt.safe_load(ckpt.list_checkpoints(r)[-1])
    assert state["step"] == STEPS
    # both ranks' RNG states were gathered into rank 0's checkpoint, and they differ (own noise per rank)
    assert len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["noise"], state["rng"][1]["noise"])
    final = ckpt.safe_load(r / "final.pt")
    assert final.keys() == state["ema"].keys() and all(torch.equal(final[k], state["ema"][k]) for k in final)
    assert all(torch.isfinite(v).all() for v in final.values())


def test_killed_run_resumes_from_its_checkpoint_to_the_uninterrupted_weights(runs):
    k = runs.killed
    assert k.workers == 2 and k.rc != 0
    assert not k.finished, "the run finished before it could be killed"
    assert k.ckpts, "no checkpoint was written before the kill"
    m = re.search(r"resuming .* from ckpt-(\d+)\.pt \(step (\d+)\)", runs.res_err)
    assert m, runs.res_err[-2000:]
    assert 0 < int(m.group(2)) < STEPS
    a, b = ckpt.safe_load(runs.ref / "final.pt"), ckpt.safe_load(runs.kill / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (ckpt.safe_load(ckpt.list_checkpoints(d)[-1]) for d in (runs.ref, runs.kill))
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def test_two_process_sampling_equals_one_process(runs):
    assert runs.gen2_out.split() == [str(runs.dir / "gen2.pt")]  # rank 0 alone writes and prints
    x1, x2 = torch.load(runs.dir / "gen1.pt"), torch.load(runs.dir / "gen2.pt")
    assert x1.dtype == torch.float32 and x1.shape == (N_SAMPLES, 2)  # a 2-D toy run: float32 points
    assert torch.equal(x1, x2)
    assert torch.isfinite(x1).all() and len(torch.unique(x1, dim=0)) == N_SAMPLES


def test_generate_cli_errors_are_clear(runs, tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    assert generate.main(["--run-dir", str(tmp_path / "missing"), "--out", out]) == 2
    assert "holds no finished run" in capsys.readouterr().err
    assert generate.main(["--run-dir", str(runs.ref), "--out", out, "--method", "euler"]) == 2
    err = capsys.readouterr().err
    assert "unknown sampling method 'euler'" in err and "ddim" in err
    assert generate.main(["--run-dir", str(runs.ref), "--out", out, "--set", "order=2"]) == 2
    assert "valid options: eta" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_generate_options_survive_torchrun_parsing():
    """torchrun's parser claims any abbreviation of its own options (--run -> --run-path) even after
    the module name: every generate option must reach lib.generate unchanged."""
    from torch.distributed.run import get_args_parser

    ours = [s for a in generate.argparser()._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    args = [x for s in ours for x in (s, "1")]
    assert get_args_parser().parse_args(["--standalone", "-m", "lib.generate", *args]).training_script_args == args
