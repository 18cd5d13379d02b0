"""Training runs as parallel processes (lib.experiment.runs): the command line rebuilds the config exactly,
finished runs are skipped, failures name the run and its stderr, one directory never gets two processes."""
import json

import pytest

from lib.experiment import runs
from lib.infra.config import get_config, toy_config, with_overrides
from lib.generate import load_model
from lib.infra.paths import Paths


def _toy_job(tmp_path, seed, arm="baseline", name=None):
    cfg = with_overrides(runs.seed_config(toy_config(get_config("ci")), seed),
                         {"train.steps": 4, "train.ckpt_every": 2, "train.log_every": 2, "sample.n_samples": 16})
    return runs.Job(cfg, arm, tmp_path / (name or f"{arm}-{seed}"), toy=True)


def test_a_worker_rebuilds_the_config_exactly(tmp_path):
    """Every job reaches its worker as Config.to_dict() through JSON (lib.infra.processes.job_context)."""
    from lib.infra import processes

    P = Paths("ci", tmp_path)
    cfgs = [_toy_job(tmp_path, 3).cfg, with_overrides(get_config("cpu"), {"sample.steps": (10, 20), "loss.tau": 0.98})]
    cfgs += [j.cfg for j in runs.dose_jobs(get_config("cpu"), P).values()]
    for cfg in cfgs:
        sent = json.loads(json.dumps(processes.job_context(cfg, P)))
        back, paths = processes.job_context_of(**sent)
        assert repr(back) == repr(cfg) and back.to_dict() == cfg.to_dict() and paths.base == P.base


def test_paths_of_seeds_keep_seed_zero_where_it_was(tmp_path):
    P = Paths("ci", tmp_path)
    assert runs.image_run(P, "s2dm") == runs.image_run(P, "s2dm", 0) == P.run("images/s2dm")
    assert runs.image_run(P, "s2dm", 2) == P.run("images/s2dm-seed2")
    jobs = runs.image_jobs(get_config("ci"), P)
    assert sorted(jobs) == [("baseline", 0), ("baseline", 1), ("s2dm", 0), ("s2dm", 1)]
    assert jobs["s2dm", 1].cfg.train.seed == 1 and jobs["baseline", 1].cfg.train.seed == 1


def test_parallel_training_equals_in_process_training(tmp_path):
    import torch

    jobs = {s: _toy_job(tmp_path, s) for s in (0, 1)}
    done = runs.train_parallel(jobs, workers=2, progress=False)
    assert all(runs.is_finished(j) for j in jobs.values())
    here = _toy_job(tmp_path, 1, name="here")
    runs.train_parallel({1: here}, workers=1, progress=False)  # in this process
    a, _ = load_model(done[1])
    b, _ = load_model(here.out)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    a0, _ = load_model(done[0])
    assert not all(torch.equal(x, y) for x, y in zip(a0.state_dict().values(), a.state_dict().values()))
    mtime = (done[0] / "final.pt").stat().st_mtime_ns
    runs.train_parallel(jobs, workers=2, progress=False)  # finished: skipped
    assert (done[0] / "final.pt").stat().st_mtime_ns == mtime


def test_a_failed_run_is_reported_with_its_directory_and_the_others_finish(tmp_path):
    bad = _toy_job(tmp_path, 0, name="bad")
    bad.out.mkdir()
    (bad.out / "run.json").write_text(json.dumps({"arm": "s2dm"}))  # lib.train refuses another arm here
    good = _toy_job(tmp_path, 1, name="good")
    with pytest.raises(RuntimeError) as e:
        runs.train_parallel({"bad": bad, "good": good}, workers=2, progress=False)
    msg = str(e.value)
    assert "1 of 2 training runs failed" in msg and str(bad.out) in msg and "not 'baseline'" in msg
    assert runs.is_finished(good)


def test_two_jobs_on_one_directory_are_refused(tmp_path):
    with pytest.raises(ValueError, match="share a run directory"):
        runs.train_parallel({1: _toy_job(tmp_path, 0, name="d"), 2: _toy_job(tmp_path, 1, name="d")}, progress=False)


# ---------------------------------------------------------------------------- initial noise and the seed design
class _FakeEvaluator:
    """Just enough of lib.experiment.evaluate.ImageEvaluator to run image_cell without a classifier."""

    def __init__(self, paths):
        self.paths, self.device, self.name = paths, "cpu", "FD_clf"

    def features(self, x):
        return x.reshape(len(x), -1).numpy()

    def score(self, f):
        return dict(value=1.0, lo=0.0, hi=2.0, n=len(f), kid=0.0, kid_lo=0.0, kid_hi=0.0)


def test_training_seeds_draw_independent_x_T_shared_by_both_arms(tmp_path):
    import torch

    from lib.experiment import evaluate

    cfg = with_overrides(get_config("ci"), {"sample.n_samples": 8, "sample.batch_size": 8})
    ev = _FakeEvaluator(Paths("ci", tmp_path))
    eps = lambda x, t: torch.zeros_like(x)  # noqa: E731  (the samples are then a function of x_T alone)
    rows = {(arm, s): evaluate.image_cell(ev, eps, cfg, arm, "ddim", 5, seed=s, progress=False)
            for arm in ("baseline", "s2dm") for s in (0, 1)}
    x = {k: torch.load(evaluate.samples_path(ev.paths, cfg, k[0], "ddim", 5, k[1])) for k in rows}
    assert torch.equal(x["baseline", 0], x["s2dm", 0]) and torch.equal(x["baseline", 1], x["s2dm", 1])
    assert not torch.equal(x["baseline", 0], x["baseline", 1])
    assert rows["baseline", 0]["sample_seed"] == cfg.sample.seed == evaluate.sample_seed(cfg, 0)
    assert rows["s2dm", 1]["sample_seed"] == evaluate.sample_seed(cfg, 1) != cfg.sample.seed
    assert {"KID", "KID_lo", "KID_hi"} <= set(rows["baseline", 0])


def test_seed_cells_put_the_full_sweep_on_the_first_seeds():
    from lib.experiment import sweep

    cfg = with_overrides(get_config("ci"), {"experiment.n_seeds": 4, "experiment.sweep_seeds": 2,
                                            "experiment.headline_steps": (10,)})
    methods, steps = ("ddim", "pndm"), (5, 10)
    assert sweep.seed_cells(cfg, methods, steps, 1) == [("ddim", 5), ("ddim", 10), ("pndm", 5), ("pndm", 10)]
    assert sweep.seed_cells(cfg, methods, steps, 3) == [("ddim", 10)]
    assert list(sweep.full_sweep_seeds(cfg)) == [0, 1]
    every = with_overrides(cfg, {"experiment.sweep_seeds": 0})
    assert list(sweep.full_sweep_seeds(every)) == [0, 1, 2, 3]
    assert len(sweep.seed_cells(every, methods, steps, 3)) == 4
    with pytest.raises(ValueError, match="headline_steps"):
        sweep.headline_cells(with_overrides(cfg, {"experiment.headline_steps": (7,)}), methods, steps)
