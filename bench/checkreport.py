"""The result file pair of the GPU check and of the speed script, and their time-budget runner.

:class:`Report` holds ``{"meta", "sections"}`` and rewrites ``<stem>.json`` and ``<stem>.md``
atomically (lib.infra.checkpoint) whenever a section finishes, so a run cut short keeps every section
it finished. :func:`run_sections` runs ``[(name, fn(section), budget_s)]`` in order, each under its
budget (SIGALRM for a section stuck in Python code; the parts check the budget left themselves).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.infra import checkpoint as ckpt  # noqa: E402

# The order of the sections in a report (a speed-only report has the last three, after environment).
SECTIONS = ("environment", "correctness", "training", "sampling", "end_to_end")


class SectionTimeout(BaseException):
    """Raised by SIGALRM when a section overruns its budget (BaseException: no part swallows it)."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Report:
    """The result file pair, rewritten atomically (lib.infra.checkpoint) whenever a section finishes."""

    def __init__(self, stem: Path, meta: dict, keep: dict | None = None):
        self.stem, self.data = stem, {"meta": meta, "sections": dict(keep or {})}

    def section(self, name: str, budget: float) -> "Section":
        s = Section(self, name, budget)
        self.data["sections"][name] = s.rec
        return s

    def write(self) -> None:
        self.data["meta"]["updated_utc"] = now()
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(self.stem.with_suffix(".json"), json.dumps(self.data, indent=2, default=_jsonable) + "\n")
        ckpt.atomic_write_text(self.stem.with_suffix(".md"), render_md(self.data))


def _jsonable(x):
    if isinstance(x, (torch.device, Path)):
        return str(x)
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return repr(x)


class Section:
    """One section's record: checks (with tolerances), targets, measurements, notes, traces."""

    def __init__(self, report: Report, name: str, budget: float):
        self.report, self.name, self.budget = report, name, budget
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + budget
        self.rec = {"status": "running", "budget_s": budget, "elapsed_s": None, "date_utc": now(), "checks": [],
                    "targets": [], "measurements": {}, "notes": [], "traces": {}}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def check(self, name, measured, tolerance: str, ok: bool | None, note: str = "") -> bool:
        """A pass/FAIL check; ``ok=None`` records a measurement with no verdict ('info')."""
        res = "info" if ok is None else ("pass" if ok else "FAIL")
        self.rec["checks"].append({"check": name, "measured": measured, "tolerance": tolerance, "result": res,
                                   **({"note": note} if note else {})})
        return bool(ok)

    def target(self, name, measured, threshold: str, ok: bool | None, note: str = "") -> bool:
        res = "info" if ok is None else ("pass" if ok else "FAIL")
        self.rec["targets"].append({"target": name, "measured": measured, "threshold": threshold, "result": res,
                                    **({"note": note} if note else {})})
        return bool(ok)

    def note(self, text: str) -> None:
        self.rec["notes"].append(text)

    def part(self, name: str, fn, need_s: float = 0.0):
        """Run one part: skipped (recorded) when less than ``need_s`` of the budget is left; an
        exception is recorded as an error of that part and the section goes on."""
        if self.left() < need_s:
            self.rec["checks"].append({"check": name, "measured": None, "tolerance": "", "result": "skipped",
                                       "note": f"{max(self.left(), 0):.0f} s of the section's budget left, "
                                               f"the part needs about {need_s:.0f} s"})
            return None
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - recorded, and the rest of the run goes on
            self.rec["checks"].append({"check": name, "measured": None, "tolerance": "", "result": "error",
                                       "note": f"{type(e).__name__}: {e}".strip()[:600],
                                       "traceback": traceback.format_exc(limit=6)[-2000:]})
            print(f"  [{self.name}] {name}: error {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None
        finally:
            self.rec.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t0, 2)

    def finish(self, status: str) -> None:
        self.rec["status"] = status
        self.rec["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        self.report.write()


def run_sections(report: Report, plan, total_deadline: float, grace_s: float = 15.0) -> None:
    """Run ``plan`` = [(name, fn(section), budget_s)] in order; each finished, failed or cut-short
    section is written before the next starts. SIGALRM (budget + grace) stops a section stuck in
    Python code; the parts check the remaining budget themselves before starting."""
    use_alarm = hasattr(signal, "SIGALRM")

    def on_alarm(signum, frame):
        raise SectionTimeout()
    old = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    try:
        for name, fn, budget in plan:
            budget = max(0.0, min(budget, total_deadline - time.perf_counter()))
            sec = report.section(name, round(budget, 1))
            report.write()
            if budget <= 0:
                sec.note("not run: the run's total time was used up")
                sec.finish("not run")
                continue
            print(f"== {name} (budget {budget:.0f} s)", flush=True)
            if use_alarm:
                signal.alarm(max(1, math.ceil(budget + grace_s)))
            try:
                fn(sec)
                status = "done"
            except SectionTimeout:
                status = "cut short (budget)"
                sec.note(f"stopped at its time budget ({budget:.0f} s + {grace_s:.0f} s grace); finished parts kept")
            except Exception as e:  # noqa: BLE001
                status = "error"
                sec.note(f"section error {type(e).__name__}: {e}\n{traceback.format_exc(limit=6)[-2000:]}")
            finally:
                if use_alarm:
                    signal.alarm(0)
            sec.finish(status)
            print(f"   {name}: {status} in {sec.rec['elapsed_s']:.1f} s", flush=True)
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, old)



def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def render_md(d: dict) -> str:
    meta, secs = d["meta"], d["sections"]
    done = [k for k, s in secs.items() if s["status"] not in ("running",)]
    env = secs.get("environment", {}).get("measurements", {})
    L = [f"# {meta.get('title', 'GPU check')}: {meta['device_name']}", "",
         f"`{meta['command']}`, started {meta['started_utc']}, last written {meta.get('updated_utc', '')}; "
         f"commit `{(meta.get('commit') or '?')[:12]}`" + (" (dry run: CPU, tiny sizes — no GPU figure here)" if meta["dry_run"] else "") + ".",
         "", "Sections written: " + (", ".join(f"{k} ({secs[k]['status']})" for k in done) or "none yet") + "."
         + ("" if len(done) == len(meta["sections"]) else f" Planned: {', '.join(meta['sections'])}."), ""]
    if env:
        L += [f"Device: {env.get('gpu', env.get('device'))}" + (f", {env['gpu_memory_gib']} GiB" if "gpu_memory_gib" in env else "")
              + f"; torch {env.get('torch')}" + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if "cuda" in env else "")
              + (f"; driver/power/clock {env['nvidia_smi']}" if "nvidia_smi" in env else "")
              + f"; CPU {env.get('cpu')} ({env.get('cpu_count')} cores); Python {env.get('python')}.", ""]
    secs = {k: secs[k] for k in sorted(secs, key=lambda k: SECTIONS.index(k) if k in SECTIONS else len(SECTIONS))}
    targets = [t for s in secs.values() for t in s.get("targets", [])]
    if targets:
        L += ["## Targets", "", "| target | measured | threshold | result |", "|---|---|---|---|"]
        L += [f"| {_fmt(t['target'])} | {_fmt(t['measured'])} | {_fmt(t['threshold'])} | **{t['result']}**"
              + (f" ({_fmt(t['note'])})" if t.get("note") else "") + " |" for t in targets]
        L.append("")
    for name, s in secs.items():
        L += [f"## {name}", "", f"Status: **{s['status']}**; {_fmt(s.get('elapsed_s'))} s of a {_fmt(s['budget_s'])} s budget.", ""]
        if s["checks"]:
            L += ["| check | measured | tolerance | result |", "|---|---|---|---|"]
            L += [f"| {_fmt(c['check'])} | {_fmt(c['measured'])} | {_fmt(c['tolerance'])} | {c['result']}"
                  + (f": {_fmt(c['note'])}" if c.get("note") else "") + " |" for c in s["checks"]]
            L.append("")
        ms = s.get("measurements", {})
        if name == "training" and ms.get("variants"):
            L += ["| variant | images/s | ms/step | peak GiB | MFU (measured bf16 peak) | MFU (nominal) |",
                  "|---|---|---|---|---|---|"]
            for k, v in ms["variants"].items():
                L.append(f"| {k} | {v['images_per_s']:.1f} | {v['step_ms']:.1f} | {_fmt(v.get('peak_memory_gib'))} | "
                         f"{_fmt(v.get('mfu_measured_peak'))} | {_fmt(v.get('mfu_nominal_peak'))} |")
            L.append("")
            rest = {k: v for k, v in ms.items() if k != "variants"}
        else:
            rest = ms
        if rest:
            L += ["<details><summary>measurements</summary>", "", "```json", json.dumps(rest, indent=1, default=_jsonable)[:6000],
                  "```", "</details>", ""]
        for k, rows in s.get("traces", {}).items():
            L += [f"Top kernels of `{k}` (torch.profiler, self time per call of the traced step):", "",
                  "| kernel / op | calls | ms per step | share |", "|---|---|---|---|"]
            L += [f"| `{r['name'][:90]}` | {r['calls']} | {r['self_ms_per_call_of_fn']:.3f} | {r['share']:.1%} |" for r in rows]
            L.append("")
        L += [f"- {n}" for n in s.get("notes", [])] + ([""] if s.get("notes") else [])
    return "\n".join(L) + "\n"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_slug(dry: bool) -> str:
    if dry:
        return "dry-run-cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-").lower()


def writable_out(out: Path) -> str | None:
    """None when ``out`` can be created and written, else the one-line error (checked before minutes
    of measurements whose report could not be written)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        return f"error: --out {out} cannot be written ({e.strerror or e}); choose a writable folder"
    return None


def kept_sections(stem: Path, chosen) -> dict:
    """The sections of an earlier ``<stem>.json`` that a partial re-run (``--sections``) does not redo."""
    try:
        return {k: v for k, v in json.loads(stem.with_suffix(".json").read_text())["sections"].items() if k not in chosen}
    except (OSError, ValueError, KeyError):
        return {}


MIN_TORCH = (2, 1)  # lib/ needs 2.0 (scaled_dot_product_attention, torch.compile, _foreach_lerp_); the flop counter 2.1


def torch_version() -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", torch.__version__.split("+")[0])[:2])


def parse_cli(argv, doc: str, sections, total_s: float, prefix: str):
    """The command line both scripts share; returns ``(args, chosen sections, result stem)``, or the exit
    code 2 after one line on stderr (no CUDA without --dry-run, an old torch, an unwritable --out)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc.split("\n\n", 1)[1])
    p.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes")
    p.add_argument("--out", default=None, help="result folder (default bench/results; a temporary one with --dry-run)")
    p.add_argument("--sections", default=",".join(sections), help=f"comma-separated subset of {','.join(sections)}")
    p.add_argument("--max-seconds", type=float, default=None, help=f"the whole run's limit (default {total_s})")
    a = p.parse_args(argv)
    chosen = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in chosen if s not in sections]
    if bad:
        p.error(f"unknown section(s) {', '.join(bad)}; valid: {', '.join(sections)}")
    error = None
    if not a.dry_run and not torch.cuda.is_available():
        error = ("error: no CUDA device is visible to this torch; run on a GPU machine, or use --dry-run (the CPU at "
                 "tiny sizes, to test the check itself)")
    elif torch_version() < MIN_TORCH:
        error = (f"error: found torch {torch.__version__}; the project and this check need torch "
                 f"{'.'.join(map(str, MIN_TORCH))} or newer")
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix=f"{prefix}_dry_")) if a.dry_run else ROOT / "bench" / "results")
    error = error or writable_out(out)
    if error:
        print(error, file=sys.stderr)
        return 2
    a.max_seconds = a.max_seconds or total_s
    return a, chosen, out / f"{prefix}_{device_slug(a.dry_run)}"


def new_report(stem: Path, a, chosen, all_sections, budgets: dict, title: str) -> Report:
    """A report whose meta names the device, the command and the commit; a partial re-run keeps the rest."""
    keep = kept_sections(stem, chosen) if set(chosen) != set(all_sections) else {}
    meta = {"title": title, "device_name": "CPU (dry run)" if a.dry_run else torch.cuda.get_device_name(0),
            "dry_run": a.dry_run, "command": " ".join(["python", *sys.argv]), "started_utc": now(),
            "commit": git_commit(), "sections": chosen, "budgets_s": budgets, "total_limit_s": a.max_seconds}
    return Report(stem, meta, keep)


def finish(report: Report, start: float) -> None:
    total = time.perf_counter() - start
    report.data["meta"]["total_s"] = round(total, 1)
    report.write()
    print(f"wrote {report.stem}.md and .json ({total:.0f} s)")
