"""The GPU route before a GPU sees it: the gpu rehearsal end to end, killed in notebook 04 and resumed,
the preflight on a bare checkout, and the pieces the rehearsal stands on (the manifest that only a
rehearsal reads, the stand-in feature network, the reference-feature cache, the CIFAR-10 fixture).

One rehearsal of profile gpu (module scope, a few minutes on 2 cores) serves the end-to-end tests."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lib import pretrained, readers
from lib.experiment import fixtures
from lib.infra import config, rehearsal
from lib.measure import fid, metrics, reference

ROOT = Path(__file__).resolve().parents[1]
REHEARSE = [sys.executable, str(ROOT / "scripts" / "rehearse.py")]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def gpu_rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearse")
    r = subprocess.run([*REHEARSE, "--profile", "gpu", "--root", str(root)], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root, r.stdout


def _table(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_gpu_rehearsal_runs_every_notebook(gpu_rehearsal):
    root, out = gpu_rehearsal
    figs = root / "figures" / "gpu"
    for name in NOTEBOOKS:
        nb = json.loads((figs / f"{name}.ipynb").read_text())
        errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, (name, errors[:1])
        assert not (figs / f"{name}.failed.ipynb").exists()
    note = (figs / "REHEARSAL.md").read_text()
    assert "no number here is a result" in note and "model.ch=32" in note and "experiment.rehearsal=" in note
    assert "train.device=cpu" in out or torch.cuda.is_available()  # said in one line at the start
    # The headline design at gpu: FID and KID per cell, the decision table on both with its family of cells.
    cells = _table(figs / "04_image_cells.csv")
    assert cells and {"FID", "KID", "KID_lo", "KID_hi"} <= set(cells[0])
    for r in cells:
        assert math.isfinite(float(r["FID"])) and float(r["KID_lo"]) <= float(r["KID"]) <= float(r["KID_hi"]), r
    decisions = _table(figs / "05_image_decisions.csv")
    assert {r["metric"] for r in decisions} == {"KID", "FID"}
    # Runs, features and fixtures under the rehearsal's root; nothing into the repository's outputs.
    assert (root / "data" / "runs" / "gpu" / "images").is_dir() and (root / "data" / "inception").is_dir()
    run = json.loads((root / "data" / "runs" / "gpu" / "images" / "s2dm" / "config.json").read_text())
    assert run["experiment"]["rehearsal"] == str(root / rehearsal.NAME) and run["model"]["norm_groups"] == 32
    assert not (ROOT / "figures" / "gpu").exists() and not (ROOT / "data" / "runs" / "gpu").exists()


def test_a_second_rehearsal_resumes_without_rerunning(gpu_rehearsal):
    root, _ = gpu_rehearsal
    r = subprocess.run([*REHEARSE, "--profile", "gpu", "--root", str(root)], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("not run again") == len(NOTEBOOKS), r.stdout[-2000:]


def test_killed_in_notebook_04_it_resumes_with_identical_tables(gpu_rehearsal):
    root, _ = gpu_rehearsal
    figs, samples = root / "figures" / "gpu", root / "data" / "runs" / "gpu" / "samples"
    names = ["04_image_cells.csv", "04_toy_cells.csv", "04_toy_summary_nll.csv"]
    before = {n: (figs / n).read_bytes() for n in names}
    before_cells = {f: f.stat().st_mtime_ns for f in samples.glob("*.pt")}
    p = subprocess.Popen([*REHEARSE, "--profile", "gpu", "--root", str(root), "--notebooks", "04"], cwd=ROOT, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill it once it has rewritten an image cell (the middle of 04), with its kernel and workers
        for _ in range(2400):  # polls, at most 20 minutes
            if any(f.stat().st_mtime_ns != t for f, t in before_cells.items()):
                break
            assert p.poll() is None, "notebook 04 ended before it reached its image cells"
            time.sleep(0.5)
        else:
            pytest.fail("notebook 04 never reached its image cells")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    r = subprocess.run([*REHEARSE, "--profile", "gpu", "--root", str(root), "--notebooks", "04"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for n in names:
        assert (figs / n).read_bytes() == before[n], n


# ---------------------------------------------------------------------------- the preflight
def test_preflight_on_a_bare_checkout_names_every_missing_file(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    from preflight import preflight_lines

    monkeypatch.setattr(fid, "INCEPTION_DIR", str(tmp_path / "tmp"))  # wherever clean-fid's files are not
    monkeypatch.setattr(fid, "STATS_DIR", str(tmp_path / "stats"))
    ok, lines = preflight_lines("gpu", [f"data.root={tmp_path / 'data'}"], tmp_path)
    text = "\n".join(lines)
    assert not ok
    for word in ("CIFAR-10", "inception-2015-12-05.pt", "cifar10_legacy_tensorflow_train_32.npz", "ema_cifar10",
                 "make fetch PROFILE=gpu"):
        assert word in text, (word, text)
    if not torch.cuda.is_available():
        assert "MISSING: CUDA" in text
    assert "hours:" in text and "estimate from FLOPs" in text


@pytest.mark.skipif((ROOT / "data" / "cifar10").exists(), reason="this checkout holds CIFAR-10: not a bare clone")
def test_preflight_script_stops_nonzero_before_any_training():
    """It stops at the checks: no notebook, no run directory (its time is reported in docs/GPU.md, not asserted)."""
    r = subprocess.run([sys.executable, "scripts/preflight.py", "--profile", "gpu"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and not (ROOT / "data" / "runs" / "gpu").exists(), r.stdout + r.stderr
    assert "MISSING" in r.stdout and "CIFAR-10" in r.stdout and "ema_cifar10" in r.stdout and "make fetch" in r.stderr
    d = subprocess.run([sys.executable, "scripts/preflight.py", "--profile", "gpu", "--dry-run"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert d.returncode == 0 and "plan:" in d.stdout


def test_preflight_refuses_an_unknown_profile_in_one_line():
    sys.path.insert(0, str(ROOT / "scripts"))
    from preflight import preflight_lines

    ok, lines = preflight_lines("gpux")
    assert not ok and len(lines) == 1 and "unknown profile" in lines[0]


# ---------------------------------------------------------------------------- what the rehearsal stands on
@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixtures")
    over = [*[f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in
              __import__("lib.infra.profiles", fromlist=["x"]).REHEARSAL_SIZES.items()],
            "train.device=cpu", f"data.root={root / 'data'}"]
    cfg = config.get_config("gpu", over)
    manifest = fixtures.make(root, "gpu", cfg, over, {"steps": (4,), "n_samples": 8, "finetune_steps": 2})
    return root, cfg, manifest


def test_cifar_fixture_reads_through_the_one_reader(made):
    root, cfg, _ = made
    x, y = readers.load_cifar10(root / "data")
    assert x.dtype == torch.uint8 and tuple(x.shape) == (5 * fixtures.PER_BATCH, 3, 32, 32) and y.max() <= 9
    xt, _ = readers.load_cifar10(root / "data", train=False)
    assert len(xt) == fixtures.PER_BATCH and not torch.equal(x[:len(xt)], xt)


def test_a_normal_run_refuses_the_fixture_checkpoint_by_its_md5(made):
    root, cfg, manifest = made
    # The fixture lies exactly where the real ema_cifar10 goes under this root: without the manifest it is refused.
    with pytest.raises(pretrained.PretrainedError, match="1fa350b952534ae442b1d5235cce5cd3"):
        pretrained.load_state("ema_cifar10", root=root)
    assert rehearsal.of(config.get_config("gpu")) is None  # nothing finds a manifest by itself
    st = pretrained.load_state("ema_cifar10", root=root, manifest=rehearsal.load(manifest))
    assert st["groups"] == 32
    model, mcfg = pretrained.load_unet("ema_cifar10", manifest=rehearsal.load(manifest))
    assert mcfg.ch == cfg.model.ch and model.norm_groups == 32


def test_manifest_errors_are_one_line(tmp_path, made):
    _, _, manifest = made
    for text, why in (("{", "not a readable"), ('{"kind": "other"}', "not a rehearsal manifest"),
                      ('{"kind": "s2dm-rehearsal-manifest", "version": 1}', "missing or malformed")):
        p = tmp_path / "m.json"
        p.write_text(text)
        with pytest.raises(rehearsal.ManifestError, match=why) as e:
            rehearsal.load(p)
        assert "\n" not in str(e.value) and "scripts/rehearse.py" in str(e.value)
    with pytest.raises(config.ConfigError, match="does not exist"):
        rehearsal.of(config.get_config("gpu", [f"experiment.rehearsal={tmp_path / 'none.json'}"]))
    m = rehearsal.load(manifest)  # a changed fixture is refused by its checksum
    stats = Path(next(iter(m.stats.values()))["path"])
    saved = stats.read_bytes()
    try:
        stats.write_bytes(saved[:-10] + b"0" * 10)
        with pytest.raises(rehearsal.ManifestError, match="changed"):
            m.stats_path(stats.name)
    finally:
        stats.write_bytes(saved)


def test_standin_has_inceptions_contract_and_is_the_same_in_every_process():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    a = fid.StandIn(seed=3)(x.float())
    b = fid.StandIn(seed=3)(x.float())
    assert a.shape == (5, 2048) and torch.equal(a, b) and not torch.equal(a, fid.StandIn(seed=4)(x.float()))
    assert a.std() > 0


def test_reference_features_are_cached_under_their_key_and_rebuilt_when_it_changes(tmp_path, made):
    _, _, manifest = made
    m = rehearsal.load(manifest)
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    kw = dict(dataset="cifar10", mode="legacy_tensorflow", cache_dir=tmp_path, manifest=m, progress=False)
    f1 = reference.reference_features(x, **kw)
    npy = next(tmp_path.glob("*.npy"))
    mtime = npy.stat().st_mtime_ns
    assert np.array_equal(reference.reference_features(x, **kw), f1) and npy.stat().st_mtime_ns == mtime  # reused
    y = x.clone()
    y[0, 0, 0, 0] ^= 1  # other images under the same name: rebuilt, saying why
    with pytest.warns(UserWarning, match="another images_sha256"):
        f2 = reference.reference_features(y, **kw)
    assert f2.shape == f1.shape
    npy.with_suffix(".json").write_text("{torn")
    with pytest.warns(UserWarning, match="torn"):
        reference.reference_features(y, **kw)


def test_fd_with_fewer_samples_than_dimensions_matches_the_full_eigenproblem():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(400, 64))
    fd_ref = metrics._FDToReference(ref)
    for n in (10, 63):
        f = torch.from_numpy(rng.normal(size=(n, 64)) * 1.2 + 0.1)
        fc = f - f.mean(0)
        cov = fc.T @ fc / (n - 1)
        lam = torch.linalg.eigvalsh(fd_ref.S @ cov @ fd_ref.S).clamp(min=0)
        d = f.mean(0) - fd_ref.mu
        full = float(d @ d + torch.trace(cov) + fd_ref.tr_ref - 2.0 * lam.sqrt().sum())
        # rel 1e-6: the D × D path takes square roots of its D − n + 1 rounding-noise eigenvalues (~1e-13 each)
        assert fd_ref(f) == pytest.approx(full, rel=1e-6)


def test_rehearse_refuses_the_repository_as_its_root_and_other_profiles():
    for args, why in ((["--profile", "gpu", "--root", str(ROOT)], "repository itself"),
                      (["--profile", "cpu"], "gpu or paper")):
        r = subprocess.run([*REHEARSE, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_paper_trains_each_run_through_torchrun_and_records_the_world_size(tmp_path):
    """At paper every image run of notebook 03 goes through torchrun with train.nproc processes (the paper
    rehearsal: two over gloo on a CPU; measured there in docs/GPU.md); the toy stays one process; run.json says so."""
    from lib.experiment import runs
    from lib.infra.paths import Paths

    cfg = config.get_config("ci", ["train.steps=4", "train.ckpt_every=2", "train.nproc=2", "train.device=cpu",
                                   "experiment.workers=1"])
    P = Paths("ci", tmp_path)
    jobs = {("images", "baseline", 0): runs.Job(cfg, "baseline", runs.image_run(P, "baseline"), False),
            ("toy", "baseline", 0): runs.Job(config.toy_config(cfg), "baseline", runs.toy_run(P, "baseline", 0), True)}
    runs.train_parallel(jobs, workers=1, progress=False)
    assert json.loads((runs.image_run(P, "baseline") / "run.json").read_text())["world_size"] == 2
    assert json.loads((runs.toy_run(P, "baseline", 0) / "run.json").read_text())["world_size"] == 1
    assert runs.processes_per_run(config.get_config("paper")) >= 1 and config.get_config("paper").train.nproc == 0


def test_fd_point_estimate_at_inception_dimensions_is_the_sqrtm_value():
    """From EIG_DIM on, the point FD comes from the eigenvalue identity (scipy's sqrtm: 15 s at D = 2,048 on a core)."""
    rng = np.random.default_rng(1)
    d = metrics.EIG_DIM
    ref = rng.normal(size=(3 * d, d))
    for n in (d // 4, 2 * d):
        f = rng.normal(size=(n, d)) * 1.1 + 0.05
        assert metrics.fd_bootstrap(f, ref, n_boot=2)["value"] == pytest.approx(metrics.fd_from_features(f, ref), rel=1e-7)


@pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "python").exists(),
                    reason="needs make and the project's .venv")
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the preflight may pass and the hours start")
def test_make_reproduce_at_gpu_stops_at_the_preflight(tmp_path):
    """`make reproduce PROFILE=gpu` starts with the preflight: without CUDA and the files it stops there, no
    notebook run, nothing written under the output root."""
    r = subprocess.run(["make", "--no-print-directory", "reproduce", "PROFILE=gpu", f"ROOT_OUT={tmp_path}",
                        f"PY={ROOT}/.venv/bin/python"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "MISSING" in r.stdout and "preflight: not ready" in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "figures").exists() and "-- 01_noise_schedule" not in r.stdout
