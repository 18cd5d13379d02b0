"""The run directory's guarantees (docs/method.md §8.3): nothing silent, nothing stale, nothing lost.
One test (or more) per guarantee, in the order of that list.

The runs are the 2-D toy model of profile ci (a few steps, well under a second each) unless an image
pipeline is the point."""
import errno
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from lib.infra import checkpoint as ckpt
from lib import generate, readers
from lib.infra import rundir
from lib import train as T
from lib.infra.runlog import read_log
from lib.infra.config import ConfigError, get_config, toy_config, with_overrides

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "lib.train", "--profile", "ci", "--toy", "--quiet"]


def toy(**over):
    cfg = toy_config(get_config("ci"))
    return with_overrides(cfg, {"train.ckpt_every": 2, "train.log_every": 2, **over})


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- 1. one process per run directory
def test_two_trainings_started_together_on_one_out_one_is_refused(tmp_path):
    out = tmp_path / "run"
    steps = ["--set", "train.steps=1500", "--set", "train.ckpt_every=500"]
    procs = {arm: subprocess.Popen(CLI + ["--arm", arm, "--out", str(out)] + steps, env=ENV, cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for arm in ("s2dm", "baseline")}
    res = {arm: (p.wait(timeout=300), p.stderr.read()) for arm, p in procs.items()}
    winners = [arm for arm, (rc, _) in res.items() if rc == 0]
    assert len(winners) == 1, res
    loser = next(arm for arm in res if arm not in winners)
    rc, err = res[loser]
    assert rc == 2 and str(out) in err and "is being trained by process" in err and "Traceback" not in err
    # the directory holds the winner's run, all of it
    assert json.loads((out / "run.json").read_text())["arm"] == winners[0]
    assert json.loads((out / "final.json").read_text())["arm"] == winners[0]
    assert all(ckpt.safe_load(p)["arm"] == winners[0] for p in ckpt.list_checkpoints(out))


def test_the_lock_of_a_killed_process_is_not_stuck(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen(CLI + ["--arm", "s2dm", "--out", str(out), "--set", "train.steps=100000"], env=ENV, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not ((out / ".lock").exists() and (out / ".lock").read_text()) and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(rundir.RunDirError, match=f"being trained by process {p.pid}"):
            with rundir.claim(out):
                pass
    finally:  # also when the check fails: no 100,000-step run left behind
        p.send_signal(signal.SIGKILL)
        p.wait()
    with rundir.claim(out):  # free again at once
        pass


# ---------------------------------------------------------------------------- 2. checkpoint provenance
def test_foreign_checkpoints_are_skipped_with_a_warning(tmp_path):
    ref = ckpt.safe_load(T.train(toy(**{"train.steps": 8}), "s2dm", tmp_path / "ref", progress=False))
    T.train(toy(**{"train.steps": 4}), "s2dm", tmp_path / "run", progress=False)  # ckpts 2, 4
    T.train(toy(**{"train.steps": 6}), "baseline", tmp_path / "other", progress=False)
    T.train(toy(**{"train.steps": 6, "loss.tau": 0.5}), "s2dm", tmp_path / "tau", progress=False)
    shutil.copy(tmp_path / "other" / "ckpt-00000006.pt", tmp_path / "run" / "ckpt-00000006.pt")
    shutil.copy(tmp_path / "tau" / "ckpt-00000006.pt", tmp_path / "run" / "ckpt-00000005.pt")
    with pytest.warns(UserWarning) as w:
        T.train(toy(**{"train.steps": 8}), "s2dm", tmp_path / "run", progress=False)
    msgs = " | ".join(str(x.message) for x in w)
    assert "ckpt-00000006.pt is not a checkpoint of this run (differs in arm 'baseline')" in msgs
    assert "ckpt-00000005.pt is not a checkpoint of this run (differs in loss.tau)" in msgs
    assert same_state(ref, ckpt.safe_load(tmp_path / "run" / "final.pt"))  # resumed from its own step 4


def test_when_no_checkpoint_fits_training_says_it_starts_over(tmp_path):
    T.train(toy(**{"train.steps": 2}), "baseline", tmp_path / "other", progress=False)
    (tmp_path / "run").mkdir()
    shutil.copy(tmp_path / "other" / "ckpt-00000002.pt", tmp_path / "run" / "ckpt-00000002.pt")
    with pytest.warns(UserWarning, match="training starts over from step 0"):
        T.train(toy(**{"train.steps": 4}), "s2dm", tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "final.json").read_text())["step"] == 4


# ---------------------------------------------------------------------------- 3. final.pt is never stale
def test_an_interrupted_extension_never_serves_the_old_final(tmp_path, monkeypatch):
    run = tmp_path / "run"
    T.train(toy(**{"train.steps": 4}), "s2dm", run, progress=False)
    assert json.loads((run / "final.json").read_text())["step"] == 4
    generate.load_model(run)  # finished: loads

    def killed(*a, **k):
        raise RuntimeError("killed")
    monkeypatch.setattr(T, "_loop", killed)
    with pytest.raises(RuntimeError, match="killed"):
        T.train(toy(**{"train.steps": 8}), "s2dm", run, progress=False)  # config.json now says 8
    with pytest.raises(ckpt.CheckpointError, match="step 4 but the run's config asks for train.steps=8"):
        generate.load_model(run)
    monkeypatch.undo()
    T.train(toy(**{"train.steps": 8}), "s2dm", run, progress=False)
    generate.load_model(run)


def test_fewer_steps_than_trained_is_refused(tmp_path):
    T.train(toy(**{"train.steps": 4}), "s2dm", tmp_path, progress=False)
    with pytest.raises(ConfigError, match="trained to step 4; train.steps=2"):
        T.train(toy(**{"train.steps": 2}), "s2dm", tmp_path, progress=False)


def test_a_torn_final_is_rebuilt_not_returned(tmp_path):
    cfg = toy(**{"train.steps": 4})
    good = ckpt.safe_load(T.train(cfg, "s2dm", tmp_path, progress=False))
    final = tmp_path / "final.pt"
    final.write_bytes(final.read_bytes()[:200])
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        generate.load_model(tmp_path)
    assert same_state(good, ckpt.safe_load(T.train(cfg, "s2dm", tmp_path, progress=False)))


# ---------------------------------------------------------------------------- 4. runs do not outlive their code
def test_a_run_of_changed_training_code_is_trained_again_and_the_old_one_kept(tmp_path, monkeypatch):
    from lib import recipe

    cfg = toy(**{"train.steps": 4})
    T.train(cfg, "s2dm", tmp_path, progress=False)
    real = recipe.recipe_fingerprint

    def edited(roots, exclude=()):  # as if the S²-DM loss had been changed since
        return {k: (v + "-edited" if k == "s2dm_loss" else v) for k, v in real(roots, exclude).items()}
    monkeypatch.setattr(recipe, "recipe_fingerprint", edited)
    with pytest.warns(UserWarning, match=r"training code changed since it was trained \(s2dm_loss\)"):
        T.train(cfg, "s2dm", tmp_path, progress=False)
    assert json.loads((tmp_path / "final.json").read_text())["code"]["s2dm_loss"].endswith("-edited")
    old = list((tmp_path / "superseded").glob("*/final.pt"))
    assert len(old) == 1 and (old[0].parent / "run.json").exists()  # kept, not deleted
    mtime = (tmp_path / "final.pt").stat().st_mtime_ns
    T.train(cfg, "s2dm", tmp_path, progress=False)  # same code again: reused
    assert (tmp_path / "final.pt").stat().st_mtime_ns == mtime


def test_the_file_fingerprint_ignores_comments_and_docstrings_only(tmp_path):
    from lib.infra import fingerprint

    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    b.write_text('"""Other doc."""\n# a comment\ndef f(x):\n\n    return x + 1  # why\n')
    c.write_text('"""Doc."""\ndef f(x):\n    """Doc."""\n    return x + 2\n')
    assert fingerprint._tree_hash(a) == fingerprint._tree_hash(b) != fingerprint._tree_hash(c)


def test_a_changed_profile_definition_retrains_but_other_overrides_are_refused(tmp_path, monkeypatch):
    from lib.infra import config

    cfg = toy(**{"train.steps": 4})
    T.train(cfg, "s2dm", tmp_path, progress=False)
    real = config.PROFILES["ci"]
    # the ci profile's EMA decay is edited in lib/infra/profiles.py: the same command now means another run
    monkeypatch.setitem(rundir.PROFILES, "ci", lambda: with_overrides(real(), {"train.ema_decay": 0.8}))
    new = toy(**{"train.steps": 4, "train.ema_decay": 0.8})
    with pytest.warns(UserWarning, match="definition of profile 'ci' changed"):
        T.train(new, "s2dm", tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different configuration"):
        T.train(with_overrides(new, {"loss.tau": 0.5}), "s2dm", tmp_path, progress=False)


@pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv/bin/python").exists(), reason="needs make")
def test_make_runs_03_again_when_its_runs_are_deleted(tmp_path):
    args = ["make", "--no-print-directory", "-q", "PROFILE=ci", f"ROOT_OUT={tmp_path}", f"PY={ROOT}/.venv/bin/python",
            f"{tmp_path}/figures/ci/03_train.ipynb"]
    executed = tmp_path / "figures" / "ci" / "03_train.ipynb"
    executed.parent.mkdir(parents=True)
    executed.write_text("{}")  # newer than every source
    marker = tmp_path / "data" / "runs" / "ci" / ".notebooks" / "03_train.done"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    assert subprocess.run(args, cwd=ROOT).returncode == 0  # up to date
    shutil.rmtree(tmp_path / "data")  # data/runs deleted
    assert subprocess.run(args, cwd=ROOT).returncode == 1  # out of date: make re-runs 03


# ---------------------------------------------------------------------------- 5. a failed notebook publishes nothing
def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "ci"\nroot = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("fails", [True, False])
def test_a_failed_notebook_does_not_replace_good_tables(tmp_path, fails):
    figures = tmp_path / "out" / "figures" / "ci"
    figures.mkdir(parents=True)
    (figures / "99_table.csv").write_text("good\n")
    (figures / "98_input.csv").write_text("x\n1\n")
    nb = _notebook(tmp_path / "99_probe.ipynb", (
        "from lib.infra import paths\nfrom lib.experiment import report\n"
        "P = paths.Paths(profile, root or None)\n"
        "assert P.require(P.figures / '98_input.csv', '98') .read_text() == 'x\\n1\\n'  # another notebook's table\n"
        "report.save_table([{'a': 1}], P.figures, '99_table')\n"
        f"assert {not fails}, 'the notebook fails after writing its table'\n"))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebook.py"), str(nb), "--profile", "ci",
                        "--root", str(tmp_path / "out"), "--no-html"], env=ENV, cwd=ROOT, capture_output=True, text=True)
    if fails:
        assert r.returncode == 1 and "not published" in r.stderr
        assert (figures / "99_table.csv").read_text() == "good\n" and not (figures / "99_table.md").exists()
        assert not (figures / "99_probe.ipynb").exists()
    else:
        assert r.returncode == 0, r.stderr
        assert (figures / "99_table.csv").read_text() != "good\n" and (figures / "99_table.md").exists()
        assert (tmp_path / "out" / "data" / "runs" / "ci" / ".notebooks" / "99_probe.done").exists()
        assert not (figures / ".staging" / "99_probe").exists()


# ---------------------------------------------------------------------------- 6. inconsistent config values
@pytest.mark.parametrize("overrides,match", [
    (["data.image_size=16"], "data.image_size=16 must equal model.resolution=8"),
    (["train.batch_size=5000"], "exceeds the 1797 training images of digits"),
    (["data.n_train=10"], "train.batch_size=32 exceeds the 10 training images"),
    (["model.ch_mult=1.5,2"], "model.ch_mult: expected an integer, got 1.5"),
    (["model.ch_mult=1,2,x"], "model.ch_mult: expected an integer, got 'x'"),
    (["model.attn_resolutions=abc"], "model.attn_resolutions: expected an integer, got 'abc'"),
    (["train.steps=nan"], "train.steps: expected an integer"),
    (["train.steps=inf"], "train.steps: expected an integer"),
    (["data.dataset=imagenet"], "data.dataset must be one of"),
    (["model.in_channels=3", "model.out_ch=3"], "digits has 1 channel"),
    (["data.dataset=cifar10"], "cifar10 has 3 channel"),
    (["data.dataset=ring8"], "needs model.kind='mlp'"),
    (["model.resolution=7", "data.image_size=7"], "divisible by"),
])
def test_inconsistent_values_fail_before_anything_is_built(overrides, match):
    with pytest.raises(ConfigError, match=match):
        get_config("ci", overrides)


def test_the_cli_reports_them_in_one_line(tmp_path, capsys):
    assert T.main(["--profile", "ci", "--arm", "s2dm", "--out", str(tmp_path / "r"), "--set", "data.image_size=16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.resolution" in err and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- 7. lib.generate checks --out first
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    return T.train(toy(**{"train.steps": 2}), "s2dm", d / "run", progress=False).parent


@pytest.mark.parametrize("where", ["directory", "parent_is_a_file"])
def test_generate_checks_the_destination_before_sampling(finished_run, tmp_path, monkeypatch, capsys, where):
    monkeypatch.setattr(generate, "generate", lambda *a, **k: pytest.fail("sampled before checking --out"))
    if where == "directory":
        out = tmp_path
    else:
        (tmp_path / "afile").write_text("")
        out = tmp_path / "afile" / "samples.pt"
    assert generate.main(["--run-dir", str(finished_run), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and str(out) in err and "Traceback" not in err


# ---------------------------------------------------------------------------- 8. data files cannot run code
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cifar_dir(root):
    folder = readers.cifar10_folder(root)
    folder.mkdir(parents=True)
    rows = np.zeros((2, 3072), dtype=np.uint8)
    for name in readers.CIFAR10_TRAIN_FILES:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": [0, 1]}, f, protocol=2)
    return folder


def test_a_crafted_cifar_pickle_cannot_run_code(tmp_path):
    folder = _cifar_dir(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f)
    with open(tmp_path / "check", "wb") as f:  # the payload does work under plain pickle
        pickle.dump(_Payload(tmp_path / "plain"), f)
    pickle.loads((tmp_path / "check").read_bytes())
    assert (tmp_path / "plain").exists()
    with pytest.raises(readers.DatasetUnreadable, match=r"data_batch_3.*posix.system|data_batch_3.*os.system"):
        readers.load_cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [
    (lambda: b"\x80\x02}q\x00(X", "not a readable batch"),  # truncated
    (lambda: b"garbage, not a pickle", "not a readable batch"),
    (lambda: pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "not uint8 \\[N, 3072\\]"),
    (lambda: pickle.dumps({b"labels": [0, 1]}), "keys \\['data'\\] are missing"),
])
def test_every_cifar_error_names_the_file(tmp_path, content, match):
    folder = _cifar_dir(tmp_path)
    (folder / "data_batch_2").write_bytes(content())
    with pytest.raises(readers.DatasetUnreadable, match=match) as e:
        readers.load_cifar10(tmp_path)
    assert str(folder / "data_batch_2") in str(e.value)
    x, y = readers._read_cifar_batch(folder / "data_batch_1")  # a good batch still reads
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1]


def test_a_torn_celeba_cache_is_rebuilt(tmp_path):
    from test_data import _write_fake_celeba

    folder, _ = _write_fake_celeba(tmp_path)
    x = readers.load_celeba(tmp_path, size=16)
    cache = folder / "celeba16_train.pt"
    cache.write_bytes(cache.read_bytes()[:50])
    with pytest.warns(UserWarning, match="cache .*celeba16_train.pt is unreadable.*rebuilding"):
        assert torch.equal(readers.load_celeba(tmp_path, size=16), x)
    assert torch.equal(torch.load(cache, weights_only=True)["images"], x)


# ---------------------------------------------------------------------------- 9. one clear line per failure
def _one_line(err):
    return err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


def test_disk_full_names_the_disk_and_the_space_then_recovers_bit_for_bit(tmp_path, monkeypatch, capsys):
    args = ["--profile", "ci", "--toy", "--arm", "s2dm", "--quiet", "--set", "train.steps=6", "--set", "train.ckpt_every=2"]
    assert T.main(args + ["--out", str(tmp_path / "ref")]) == 0
    real, calls = torch.save, []

    def full(obj, f):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint does not fit
            f.write(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f)
    monkeypatch.setattr(torch, "save", full)
    capsys.readouterr()
    assert T.main(args + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "no space left on the disk" in err and "free" in err and "MiB" in err
    assert not list((tmp_path / "run").glob(".*.tmp"))
    monkeypatch.undo()  # space freed
    assert T.main(args + ["--out", str(tmp_path / "run")]) == 0
    assert same_state(ckpt.safe_load(tmp_path / "ref" / "final.pt"), ckpt.safe_load(tmp_path / "run" / "final.pt"))


def test_bad_out_bad_json_and_permissions_are_one_line(tmp_path, monkeypatch, capsys):
    base = ["--profile", "ci", "--toy", "--arm", "s2dm", "--quiet", "--set", "train.steps=2"]
    (tmp_path / "afile").write_text("")
    assert T.main(base + ["--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "is a file, not a directory" in err
    run = tmp_path / "run"
    assert T.main(base + ["--out", str(run)]) == 0
    capsys.readouterr()
    for name in ("config.json", "run.json"):
        good = (run / name).read_text()
        (run / name).write_text(good[:-5])
        assert T.main(base + ["--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert _one_line(err) and str(run / name) in err and "not valid JSON" in err
        (run / name).write_text(good)

    def denied(out):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))
    monkeypatch.setattr(rundir, "claim", denied)
    assert T.main(base + ["--out", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "permission denied writing" in err and str(tmp_path / "ro") in err


def test_ctrl_c_is_one_line_and_resumable(tmp_path):
    out = tmp_path / "run"
    # A shell that starts a command in the background (`nohup make test &`, `.ci/run &`) sets SIGINT to
    # "ignore", and the child inherits it, as a process started from that terminal should: Ctrl-C is not
    # meant for it. Here the test plays the terminal, so the child gets the default disposition back.
    p = subprocess.Popen(CLI + ["--arm", "s2dm", "--out", str(out), "--set", "train.steps=100000",
                                "--set", "train.ckpt_every=20"], env=ENV, cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not ckpt.list_checkpoints(out) and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    finally:  # a child that missed the signal would otherwise train on after the test, 100,000 steps
        p.kill()
    assert p.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted:") and "run the same command again" in err


# ---------------------------------------------------------------------------- 10. temp files of killed writes
def test_temp_files_left_by_a_killed_write_are_swept(tmp_path):
    tmp_path.joinpath(".ckpt-00000002.pt.k3j4.tmp").write_bytes(b"partial")
    tmp_path.joinpath(".final.pt.a1b2.tmp").write_bytes(b"partial")
    tmp_path.joinpath("keep.tmp").write_bytes(b"not ours")
    T.train(toy(**{"train.steps": 2}), "s2dm", tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == ["keep.tmp"] and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------------------- 11. the umask is respected
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_written_atomically_respect_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        a = ckpt.atomic_write_text(tmp_path / "a.json", "{}")
        b = ckpt.atomic_save({"w": torch.zeros(2)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == mode and stat.S_IMODE(b.stat().st_mode) == mode


# ---------------------------------------------------------------------------- 12. data.root
def test_relative_data_root_is_the_repositorys_and_root_changes_do_not_block_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # notebooks run in notebooks/: a relative root must not follow the cwd
    assert readers.resolve_root("data") == ROOT / "data"
    assert readers.resolve_root(tmp_path) == tmp_path
    cfg = toy(**{"train.steps": 4})
    T.train(with_overrides(cfg, {"train.steps": 2}), "s2dm", tmp_path / "run", progress=False)
    moved = with_overrides(cfg, {"data.root": "/elsewhere/data", "data.download": True})
    assert T.train(moved, "s2dm", tmp_path / "run", progress=False).exists()  # resumed, not refused
    assert read_log(tmp_path / "run")["step"][-1] == 4
