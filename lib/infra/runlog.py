"""A run directory's training log, ``loss.csv``: one row per ``train.log_every`` steps.

Columns (:data:`LOG_FIELDS`): the step, the mean loss of the global batch, its parts — ``l0`` (the
ε-prediction term L_0), ``lskip`` (S²-DM's skip term, docs/method.md §1) and ``consistency`` (the
consistency term of the CDM arm, before its weight λ) — then the learning rate, the gradient norm
before clipping and the training throughput. A term an arm does not have is logged as 0.

Logs written before the ``consistency`` column existed carried CDM's term in ``lskip``; :func:`read_log`
reads them with the term under its own name (the run's arm is in its ``run.json``).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from lib.infra.checkpoint import atomic_write_text

LOG_FIELDS = ("step", "loss", "l0", "lskip", "consistency", "lr", "grad_norm", "images_per_s")
LOG_NAME = "loss.csv"


def log_path(run_dir) -> Path:
    return Path(run_dir) / LOG_NAME


def append_row(run_dir, row: dict) -> None:
    """Append one row (floats with 6 significant digits); the header first in a new log."""
    path = log_path(run_dir)
    if not path.parent.is_dir():
        from lib.infra.rundir import vanished
        raise vanished(path.parent)
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(",".join(LOG_FIELDS) + "\n")
        f.write(",".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k]) for k in LOG_FIELDS) + "\n")


def truncate(run_dir, upto: int) -> None:
    """Keep only the rows of steps <= ``upto`` (a resumed run rewrites what follows)."""
    path = log_path(run_dir)
    if not path.exists():
        return
    # a torn last row (killed mid-append) or a foreign row is dropped; an unparsable file keeps no row
    try:
        rows = [r for r in _rows(run_dir) if row_ok(r) and int(float(r["step"])) <= upto]
    except (csv.Error, ValueError):
        rows = []
    atomic_write_text(path, ",".join(LOG_FIELDS) + "\n" + "".join(
        ",".join(r[k] for k in LOG_FIELDS) + "\n" for r in rows))


def row_ok(r: dict) -> bool:
    """A complete row of loss.csv (every field a number, the step an integer)."""
    try:
        [float(r[k]) for k in LOG_FIELDS]
        int(r["step"])
        return True
    except (KeyError, TypeError, ValueError):
        return False


class LogError(ValueError):
    """A torn or foreign loss.csv: the message names the file and the fix."""


def read_log(run_dir) -> dict[str, list[float]]:
    """``loss.csv`` of a run directory as columns of floats (every name of :data:`LOG_FIELDS`)."""
    try:
        rows = _rows(run_dir)
        return {k: [float(r[k]) for r in rows] for k in LOG_FIELDS}
    except (KeyError, TypeError, ValueError, csv.Error) as e:  # a torn, edited or garbage log: one line naming it
        raise LogError(f"{log_path(run_dir)} is torn or not this project's log ({type(e).__name__}: {e}); run the "
                       f"training command again (it rewrites the log from its checkpoints' steps)") from None


def _rows(run_dir) -> list[dict]:
    """The rows as strings, in today's columns (an older log's CDM term moved to ``consistency``)."""
    with open(log_path(run_dir), errors="replace") as f:  # garbage bytes: rows that row_ok drops, not a crash
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames or []
    if not set(LOG_FIELDS) - {"consistency"} <= set(fields):
        raise ValueError(f"its header is not this project's ({','.join(fields)[:60]!r})")
    if "consistency" not in fields:
        try:
            arm = json.loads((Path(run_dir) / "run.json").read_text()).get("arm")
        except (OSError, ValueError):
            arm = None
        for r in rows:
            r["consistency"], r["lskip"] = (r["lskip"], "0") if arm == "cdm" else ("0", r["lskip"])
    return rows
