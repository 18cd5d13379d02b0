"""The prepared GPU check: ``pytest -m cuda`` (correctness), then the speed benchmark, in one time budget.

    python bench/gpu_check.py                      # on a GPU machine (about 8 minutes; `make gpu-check`)
    python bench/gpu_check.py --dry-run            # every section on the CPU at tiny sizes (under a minute)
    python bench/gpu_check.py --sections training  # re-run some sections; the others stay in the file
    python scripts/install_missing.py --offline .whl ...  # first: missing diffusers/clean-fid/mlxtend (`make gpu-check`)

It writes ``<out>/gpu_check_<gpu-name>.json`` and ``.md`` (``--out`` defaults to bench/results; for
``--dry-run`` to a fresh temporary folder, so tests never touch bench/results), rewritten atomically
after every finished section (bench/checkreport.py): a run that is cut short keeps every section it
finished. Each section has its own time budget (``BUDGET_S``; the total ≤ 8 minutes on one H100/H200):
a section that runs out records what it finished and the run moves on.

Sections: *environment*, then *correctness* (``pytest -m cuda tests/test_cuda.py``, the same tests anyone
runs on a GPU machine: every sampler of lib.samplers.METHODS on the device against the CPU, a training
step in float32 and bf16, channels_last, fused Adam, lib.generate, DDP through torchrun over NCCL; each
test is a check of the report), then the speed benchmark's *training*, *sampling* and *end_to_end*
(bench/gpu_speed.py, which also runs alone).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gpu_speed  # noqa: E402  (bench/gpu_speed.py)
from checkreport import Report, Section, finish, new_report, parse_cli, run_sections  # noqa: E402, F401  (Report: re-exported)

ROOT = BENCH.parent
SECTIONS = ("environment", "correctness", "training", "sampling", "end_to_end")
BUDGET_S = {s: 80 if s == "correctness" else gpu_speed.BUDGET_S[s] for s in SECTIONS}  # 460 s
TOTAL_S = 480  # the whole run, one H100/H200
DRY_BUDGET_S = {k: 60 for k in SECTIONS}


def section_correctness(S: Section, tmp: Path, dry: bool) -> None:
    """``pytest -m cuda tests/test_cuda.py`` (the dry run: on the CPU, tiny) within the section's budget;
    every test becomes a check of this report (its outcome; the tolerances are in the tests)."""
    junit = tmp / "cuda_tests.xml"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if dry:
        env["S2DM_CUDA_TESTS_ON_CPU"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", str(ROOT / "tests" / "test_cuda.py"),
           "-o", "junit_family=xunit1", f"--junitxml={junit}"]  # xunit1 keeps record_property's values
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(5.0, S.left()))
        tail = (r.stdout + r.stderr).strip().splitlines()
        S.note(f"`pytest -m cuda tests/test_cuda.py`: {tail[-1] if tail else 'no output'}")
    except subprocess.TimeoutExpired:
        S.note("pytest -m cuda ran out of the section's budget; the tests it finished are below")
    if not junit.exists():
        raise RuntimeError(f"pytest -m cuda wrote no result file: {(r.stdout + r.stderr)[-800:]}")
    import xml.etree.ElementTree as ET

    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "?").removeprefix("test_").replace("_", " ")
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        # the value each test measured (record_property "measured"), with its tolerance
        measured = next((p.get("value") for p in case.iter("property") if p.get("name") == "measured"), None)
        if bad is not None:
            S.check(name, measured, "tests/test_cuda.py", False, (bad.get("message") or "")[:600])
        elif skipped is not None:
            S.rec["checks"].append({"check": name, "measured": None, "tolerance": "tests/test_cuda.py", "result": "n/a",
                                    "note": (skipped.get("message") or "")[:300]})
        else:
            S.check(name, measured or f"{float(case.get('time', 0)):.2f} s", "tests/test_cuda.py", True)


def main(argv=None) -> int:
    start = time.perf_counter()
    cli = parse_cli(argv, __doc__, SECTIONS, TOTAL_S, "gpu_check")
    if cli == 2:
        return 2
    a, chosen, stem = cli
    budgets = DRY_BUDGET_S if a.dry_run else BUDGET_S
    report = new_report(stem, a, chosen, SECTIONS, budgets, "GPU check")
    ctx = gpu_speed.Ctx(a.dry_run)
    plan = gpu_speed.plan(ctx, [s for s in chosen if s != "correctness"], budgets, report)
    if "correctness" in chosen:  # after the environment, before the speed sections
        at = 1 if plan and plan[0][0] == "environment" else 0
        plan.insert(at, ("correctness", lambda sec: section_correctness(sec, ctx.tmp, a.dry_run), budgets["correctness"]))
    try:
        run_sections(report, plan, start + a.max_seconds)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    finish(report, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
