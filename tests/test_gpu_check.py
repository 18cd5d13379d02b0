"""bench/gpu_check.py: the dry run goes through every section on the CPU (its correctness section runs
tests/test_cuda.py's ``cuda`` tests there, its speed sections are bench/gpu_speed.py's), and the result
file keeps every finished section when a run is cut short (bench/checkreport.py). bench/gpu_speed.py
also runs alone.

The dry run is the check's only test before a GPU is seen: the same code paths at tiny sizes, its
speed verdicts meaningless (they are labelled so), its correctness checks real (CPU against CPU, and
bf16 autocast against float32)."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    d = json.loads((out / "gpu_check_dry-run-cpu.json").read_text())
    return d, (out / "gpu_check_dry-run-cpu.md").read_text(), time.perf_counter() - t0


def test_dry_run_runs_every_section(dry_run):
    d, md, _ = dry_run
    secs = d["sections"]
    assert list(secs) == ["environment", "correctness", "training", "sampling", "end_to_end"]
    for name, s in secs.items():
        assert s["status"] == "done", (name, s["notes"])
        bad = [c for c in s["checks"] if c["result"] in ("error", "skipped", "FAIL")]
        assert not bad, (name, bad)
        assert f"## {name}" in md
    checks = {c["check"] for c in secs["correctness"]["checks"]}  # the tests of tests/test_cuda.py (pytest -m cuda)
    from lib import samplers
    for method in samplers.METHODS:  # every registered sampler was compared
        assert any(c.startswith("sampler ") and c.endswith(f"[{method}]") for c in checks), method
    assert any("ddp" in c for c in checks) and any("generate" in c for c in checks)
    assert any("bf16" in c for c in checks) and any("channels last matches contiguous" in c for c in checks)
    e2e = {c["check"]: c["result"] for c in secs["end_to_end"]["checks"]}
    assert any("killed" in k for k in e2e) and any("loss falls" in k for k in e2e), e2e


def test_dry_run_estimates_end_to_end_from_its_own_rates(dry_run):
    """paper / gpu training hours = steps × batch / (images/s of our fastest variant); 50k DDIM-10 seconds."""
    from lib.infra.config import get_config
    d, md, _ = dry_run
    est = d["sections"]["end_to_end"]["measurements"]["estimate"]
    ours = [v["images_per_s"] for v in d["sections"]["training"]["measurements"]["variants"].values() if v["kind"] == "ours"]
    for profile in ("paper", "gpu"):
        t = get_config(profile).train
        assert est[f"{profile}_training_h"] == pytest.approx(t.steps * t.batch_size / max(ours) / 3600)
    assert est["ddim10_50k_s"] == d["sections"]["sampling"]["measurements"]["ddim10_lib_generate"]["time_50k_s"]
    assert "end-to-end estimate: paper-profile training" in md


def test_speed_script_runs_alone_and_names_the_device(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(BENCH / "gpu_speed.py"), "--dry-run", "--sections", "sampling",
                        "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    d = json.loads((tmp_path / "gpu_speed_dry-run-cpu.json").read_text())
    assert list(d["sections"]) == ["environment", "sampling"]  # the device first: the speed figures need it
    assert d["meta"]["device_name"] == "CPU (dry run)" and d["sections"]["environment"]["measurements"]["device"] == "cpu"
    assert d["sections"]["sampling"]["measurements"]["ddim10_lib_generate"]["images_per_s"] > 0
    assert (tmp_path / "gpu_speed_dry-run-cpu.md").read_text().startswith("# GPU speed: CPU (dry run)")


def test_dry_run_reports_targets_and_traces(dry_run):
    d, md, elapsed = dry_run
    tr = d["sections"]["training"]
    variants = tr["measurements"]["variants"]
    assert any(v["settings"]["compile"] for v in variants.values())  # torch.compile went through train_step
    assert {v["settings"]["precision"] for v in variants.values()} >= {"float32", "tf32", "default"}
    assert tr["measurements"]["flops_per_image"]["ours"]["train_step"] > 2 * tr["measurements"]["flops_per_image"]["ours"]["forward"]
    targets = [t for s in d["sections"].values() for t in s["targets"]]
    names = " ".join(t["target"] for t in targets)
    assert "6,300" in names and "50k DDIM-10" in names and "S²-DM" in names
    assert all(t["result"] in ("pass", "FAIL", "info") for t in targets)
    # the tiny CPU run misses the GPU speed target, so the trace of a failing variant is exercised
    assert any(t["result"] == "FAIL" for t in targets)
    traces = [rows for s in d["sections"].values() for rows in s["traces"].values()]
    assert traces and all(rows and rows[0]["self_ms_per_call_of_fn"] > 0 for rows in traces)
    assert "Top kernels" in md and "dry run" in md
    assert not (BENCH / "results" / "gpu_check_dry-run-cpu.json").exists()  # tests never write into bench/results
    print(f"dry run: {elapsed:.1f} s")


def _gpu_check_module():
    sys.path.insert(0, str(BENCH))
    import gpu_check
    return gpu_check


def test_cut_short_run_keeps_finished_sections(tmp_path):
    gc = _gpu_check_module()
    stem = tmp_path / "gpu_check_x"
    report = gc.Report(stem, {"device_name": "test", "dry_run": True, "command": "test", "started_utc": "now",
                              "sections": ["a", "b", "c", "d"]})
    seen_on_disk = {}

    def a(sec):
        sec.check("a check", 1.0, "== 1", True)

    def b(sec):
        seen_on_disk["b"] = json.loads(stem.with_suffix(".json").read_text())["sections"]
        sec.check("finished before the budget ran out", 2.0, "", True)
        while True:  # overruns its budget: SIGALRM stops it
            time.sleep(0.01)

    def c(sec):
        sec.part("a broken part", lambda: 1 / 0)
        raise ValueError("the section itself fails")

    def d(sec):
        sec.check("still runs", 0, "", True)

    gc.run_sections(report, [("a", a, 5), ("b", b, 1), ("c", c, 5), ("d", d, 5)], time.perf_counter() + 60, grace_s=0)
    on_disk = json.loads(stem.with_suffix(".json").read_text())["sections"]
    assert seen_on_disk["b"]["a"]["status"] == "done"  # a was on disk before b started
    assert on_disk["a"]["status"] == "done"
    assert on_disk["b"]["status"] == "cut short (budget)" and on_disk["b"]["checks"][0]["result"] == "pass"
    assert on_disk["c"]["status"] == "error" and on_disk["c"]["checks"][0]["result"] == "error"
    assert on_disk["d"]["status"] == "done"
    assert "cut short (budget)" in stem.with_suffix(".md").read_text()


def test_no_copy_of_the_training_step():
    """Every training step of the check is lib.train.train_step: no backward or optimiser step of its own."""
    for f in ("gpu_check.py", "gpu_speed.py", "checkreport.py", "timing.py", "unet2d_twin.py"):
        src = (BENCH / f).read_text()
        assert not re.search(r"\.backward\(|\bopt\.step\(|zero_grad\(|clip_grad_norm_", src), f
    assert "train_step(" in (BENCH.parent / "lib" / "experiment" / "steptime.py").read_text()  # the step timer bench/timing.py uses
