"""Progress bars: tqdm's widget bar in an interactive Jupyter kernel, its plain text bar elsewhere.

A widget bar saved by papermill is a reference to widget state nobody can render, so headless runs
(``scripts/run_notebook.py`` sets ``S2DM_PLAIN_BARS=1``; set it yourself for a bare ``papermill``)
get the text bar, and so do terminals and kernels without ``ipywidgets`` (where ``tqdm.auto`` would
warn and fall back anyway). The choice is made once, when this module is first imported."""
from __future__ import annotations

import os
import sys


def widgets_wanted() -> bool:
    """True in a Jupyter kernel with ipywidgets installed, unless ``S2DM_PLAIN_BARS`` is set (not 0)."""
    if os.environ.get("S2DM_PLAIN_BARS", "") not in ("", "0"):
        return False
    ipython = sys.modules.get("IPython")  # never imported here: a plain script has no kernel to ask
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or "IPKernelApp" not in shell.config:
        return False
    try:
        import ipywidgets  # noqa: F401  (what tqdm.notebook draws with)
    except ImportError:
        return False
    return True


if widgets_wanted():
    from tqdm.notebook import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm", "widgets_wanted"]


# ---------------------------------------------------------------- many training runs at once
def logged_step(loss_csv) -> int:
    """The last step a run's ``loss.csv`` records (lib.train appends a row every ``train.log_every``
    steps); 0 when there is none yet. Reads only the header and the file's tail."""
    try:
        with open(loss_csv, "rb") as f:
            header = f.readline().decode(errors="replace").strip().split(",")
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    col = header.index("step") if "step" in header else 0
    for line in reversed(tail):
        cells = line.split(",")
        if len(cells) > col and cells[col].strip().isdigit():
            return int(cells[col])
    return 0


def _live_display_wanted() -> bool:
    """An interactive kernel that can update one output in place (not papermill: S2DM_PLAIN_BARS)."""
    if os.environ.get("S2DM_PLAIN_BARS", "") not in ("", "0"):
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


class RunsProgress:
    """One progress display over training runs that other processes execute.

    ``runs``: {key: (label, loss.csv path, total steps)}. :meth:`update` (called while waiting) reads each
    running run's step from its loss.csv: in a Jupyter kernel one output is redrawn in place (every
    ``refresh`` s); elsewhere (papermill, terminals) one plain line is printed every ``every`` s and
    whenever a run finishes. Speed: steps per second since the run's first logged step."""

    def __init__(self, runs: dict, every: float = 30.0, refresh: float = 1.0, live: bool | None = None, out=None,
                 clock=None):
        import time

        self._time = clock or time.time
        self.runs, self.every, self.refresh = dict(runs), every, refresh
        self.live = _live_display_wanted() if live is None else live
        self.out = out or sys.stdout
        self.t0 = self._time()
        self.steps = {k: 0 for k in self.runs}
        self.seen = {}  # key -> (time, step) of the first logged step seen
        self.finished = set()
        self.handle, self.last, self.printed = None, -float("inf"), None

    def _observe(self, running, now):
        for k in running:
            self.steps[k] = logged_step(self.runs[k][1])
            if self.steps[k] > 0:  # process start and data loading do not count towards the speed
                self.seen.setdefault(k, (now, self.steps[k]))
        for k in self.finished:
            self.steps[k] = self.runs[k][2]

    def text(self, running=()) -> str:
        now = self._time()
        done, total = sum(self.steps.values()), sum(t for _, _, t in self.runs.values()) or 1
        el = int(now - self.t0)
        head = (f"[{el // 60}:{el % 60:02d}] {done:,}/{total:,} steps ({100 * done / total:.0f} %), "
                f"{len(self.finished)}/{len(self.runs)} runs done")
        parts = []
        for k in running:
            label, _, t = self.runs[k]
            t_seen, s_seen = self.seen.get(k, (now, self.steps[k]))
            rate = (self.steps[k] - s_seen) / (now - t_seen) if now - t_seen > 1 else 0.0
            parts.append(f"{label} {self.steps[k]:,}/{t:,}" + (f" at {rate:.1f} steps/s" if rate > 0 else ""))
        return head + ("; running: " + "; ".join(parts) if parts else "")

    def update(self, running=(), finished=(), final: bool = False):
        """Read the running runs' steps; redraw (live) or print a line (plain) if it is time, a run
        finished, or ``final``."""
        new = set(finished) - self.finished
        self.finished |= set(finished)
        now = self._time()
        self._observe(running, now)
        if self.live:
            if final or new or now - self.last >= self.refresh:
                self.last = now
                data = {"text/plain": self.text(running)}
                from IPython.display import display
                if self.handle is None:
                    self.handle = display(data, raw=True, display_id=True)
                else:
                    self.handle.update(data, raw=True)
        elif final or new or now - self.last >= self.every:
            self.last = now
            line = self.text(running)
            if line.split("] ", 1)[-1] != self.printed:  # the final call repeats no line
                print(line, file=self.out, flush=True)
                self.printed = line.split("] ", 1)[-1]
