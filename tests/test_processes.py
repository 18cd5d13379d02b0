"""The one fan-out mechanism (lib.experiment.workers.call_in_workers): the same results in worker
processes as in this process, failures named, arguments that cannot travel refused before anything
starts, and a call file that names any other function refused (no data file runs code)."""
import json
import sys
import subprocess

import pytest

from lib.experiment import runs
from lib.experiment.workers import call_in_workers
from lib.infra import processes
from lib.infra.config import get_config, toy_config, with_overrides
from lib.infra.paths import ROOT, Paths


def _toy(seed, tmp_path, arm="baseline"):
    cfg = with_overrides(runs.seed_config(toy_config(get_config("ci")), seed),
                         {"train.steps": 2, "train.ckpt_every": 2, "train.log_every": 2, "sample.n_samples": 16})
    return {"config": cfg.to_dict(), "arm": arm, "out": str(tmp_path / f"{arm}-{seed}")}


def test_a_failed_call_is_named_and_the_others_finish(tmp_path):
    calls = {"ok": _toy(0, tmp_path), "bad": _toy(1, tmp_path, arm="nope")}
    done, fails = call_in_workers(runs.train_job, calls, 2, progress=False, describe=lambda k: f"job {k}")
    assert done == {"ok": None} and len(fails) == 1
    assert fails[0].startswith("job bad exited with 1") and "unknown arm 'nope'" in fails[0]
    assert (tmp_path / "baseline-0" / "final.pt").exists()


def test_arguments_that_cannot_travel_are_refused_before_starting(tmp_path):
    with pytest.raises(TypeError, match="must be JSON"):
        call_in_workers(runs.train_job, {1: {"config": object()}}, 2)
    with pytest.raises(ValueError, match="is not a worker function"):
        call_in_workers(processes.n_workers, {1: {}}, 2)
    ctx = processes.job_context(get_config("ci"), Paths("ci", tmp_path))
    cfg, paths = processes.job_context_of(**json.loads(json.dumps(ctx)))
    assert repr(cfg) == repr(get_config("ci")) and paths.base == Paths("ci", tmp_path).base


def test_a_call_file_naming_another_function_is_refused(tmp_path):
    f = tmp_path / "call.json"
    f.write_text(json.dumps({"function": "os:system", "kwargs": {"command": "touch pwned"}, "out": str(tmp_path / "o")}))
    r = subprocess.run([sys.executable, "-m", "lib.experiment.worker_main", str(f)], cwd=tmp_path, capture_output=True,
                       text=True, env=processes.worker_env())
    assert r.returncode == 2 and "names 'os:system', not one of lib.experiment.runs:train_job" in r.stderr
    assert not (tmp_path / "pwned").exists() and not (ROOT / "pwned").exists()


def test_the_worker_runs_every_listed_function_and_no_other():
    from lib.experiment import worker_main, workers
    assert set(worker_main.FUNCTIONS) == set(workers.WORKER_FUNCTIONS)
