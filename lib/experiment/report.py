"""Saving what the notebooks show: figures as PNG and PDF, tables as CSV and Markdown."""
from __future__ import annotations

import csv
import io
import math
import re
import sys
from pathlib import Path

from lib.infra.checkpoint import atomic_write_text


def save_figure(fig, folder, name: str, dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``<folder>/<name>.png`` and ``.pdf``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        p = folder / f"{name}.{ext}"
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        out.append(p)
    return out


MAX_COLUMNS = 10  # a Markdown table wider than this does not read on one screen; the CSV keeps every column
# A single number is shown to ``digits`` significant digits unless that moves it by more than this
# fraction: λ = 1.005 or 1.0002 must not read as 1.00 (up to three more digits are added).
REL_ERROR = 2e-3


def _decimals(v: float, digits: int) -> int:
    """Decimals that show ``v`` with ``digits`` significant digits (0 for large values)."""
    if v == 0 or not math.isfinite(v):
        return 0
    return max(0, digits - 1 - math.floor(math.log10(abs(v))))


def _number(v):
    """``v`` as a float if it is a number (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _fmt(v, digits: int, decimals: int | None = None) -> str:
    """One cell: ``digits`` significant digits (or the given decimals), words for booleans."""
    if isinstance(v, bool) or v in ("True", "False"):
        return "yes" if v in (True, "True") else "no"
    x = _number(v)
    if x is None:
        return str(v)
    if isinstance(v, int) or (x.is_integer() and abs(x) < 10 ** digits and decimals is None):
        return str(int(x))
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else str(x)
    if decimals is None and (abs(x) < 1e-3 or abs(x) >= 1e6):
        return f"{x:.{digits - 1}e}"
    if decimals is None:  # more digits where ``digits`` would misstate the value (1.005 is not "1.00")
        decimals = next(d for d in range(_decimals(x, digits), _decimals(x, digits) + 4)
                        if abs(round(x, d) - x) <= REL_ERROR * abs(x) or d == _decimals(x, digits) + 3)
    return f"{x:.{decimals}f}"


def _interval_groups(columns: list) -> list[tuple[str, str | None, str | None, str | None]]:
    """(header, value, lo, hi) per displayed column: ``x``/``x_lo``/``x_hi`` (or ``x lo``/``x hi``) become
    one column ``x [lo, hi]``; a bare ``lo``/``hi`` pair joins the column before it; ``boot lo``/``boot hi``
    without a ``boot`` column become ``boot [lo, hi]``."""
    cols, used, out = list(columns), set(), []
    def pair(prefix):
        for sep in ("_", " "):
            lo, hi = f"{prefix}{sep}lo", f"{prefix}{sep}hi"
            if lo in cols and hi in cols:
                return lo, hi
        return None
    for c in cols:
        if c in used:
            continue
        p = pair(c)
        if p:
            out.append((f"{c} [lo, hi]", c, *p))
            used.update((c, *p))
        elif c == "lo" and "hi" in cols and out and out[-1][2] is None and out[-1][1] is not None:
            out[-1] = (f"{out[-1][0]} [lo, hi]", out[-1][1], "lo", "hi")
            used.update(("lo", "hi"))
        elif (m := re.fullmatch(r"(.+?)[_ ]lo", c)) and pair(m[1]) and m[1] not in cols:
            lo, hi = pair(m[1])
            out.append((f"{m[1]} [lo, hi]", None, lo, hi))
            used.update((lo, hi))
        else:
            out.append((c, c, None, None))
            used.add(c)
    return out


def _cell(r: dict, value, lo, hi, digits: int) -> str:
    if lo is None:
        return _fmt(r.get(value, ""), digits)
    lo_v, hi_v = r.get(lo, ""), r.get(hi, "")
    if value is None:
        x = max((abs(y) for y in (_number(lo_v), _number(hi_v)) if y is not None and math.isfinite(y)), default=None)
        d = _decimals(x, digits) if x and 1e-3 <= x < 1e6 else None
        return f"[{_fmt(lo_v, digits, d)}, {_fmt(hi_v, digits, d)}]" if lo_v != "" else ""
    v = r.get(value, "")
    x = _number(v)
    if lo_v in ("", None) or x is None:
        return _fmt(v, digits)
    # one precision for the value and its interval, set by the largest of the three (an interval's ends
    # are not known to more digits than that)
    m = max(abs(y) for y in (x, _number(lo_v), _number(hi_v)) if y is not None and math.isfinite(y))
    d = None if m < 1e-3 or m >= 1e6 else _decimals(m, digits)
    return f"{_fmt(v, digits, d)} [{_fmt(lo_v, digits, d)}, {_fmt(hi_v, digits, d)}]"


def _column_digits(rows: list[dict], group, digits: int) -> int:
    """Significant digits for a plain number column: ``digits``, or up to three more where ``digits``
    would show two different values alike in a column of nearby values (a setting such as λ 1.0002,
    1.002, 1.005: its differences are the point of the table; measured values keep ``digits``)."""
    if group[2] is not None:
        return digits
    values = {v for v in (_number(r.get(group[1], "")) for r in rows) if v is not None and math.isfinite(v)}
    if not values or min(values) <= 0 or max(values) > 1.25 * min(values):
        return digits
    for d in range(digits, digits + 4):
        if len({_fmt(v, d) for v in values}) == len(values):
            return d
    return digits + 3


def to_markdown(rows: list[dict], columns=None, digits: int = 3, max_columns: int = MAX_COLUMNS) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts sharing keys), formatted for reading.

    Interval columns merge into ``value [lo, hi]`` cells, numbers get ``digits`` significant digits
    (an interval the decimals of its value), booleans read yes/no. Beyond ``max_columns``, columns
    holding one value in every row move into a line under the table, then the last columns are left
    to the CSV (the line says which)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    groups = _interval_groups(columns)
    const, hidden = [], []
    if len(groups) > max_columns and len(rows) > 1:
        const = [g for g in groups if len({_cell(r, *g[1:], digits) for r in rows}) == 1][: len(groups) - max_columns]
        groups = [g for g in groups if g not in const]
    if len(groups) > max_columns:
        groups, hidden = groups[:max_columns], groups[max_columns:]
    lines = ["| " + " | ".join(g[0] for g in groups) + " |", "|" + "|".join("---" for _ in groups) + "|"]
    d = {g: _column_digits(rows, g, digits) for g in groups}
    lines += ["| " + " | ".join(_cell(r, *g[1:], d[g]) for g in groups) + " |" for r in rows]
    if const:
        lines += ["", "In every row: " + "; ".join(f"{g[0]} {_cell(rows[0], *g[1:], digits)}" for g in const) + "."]
    if hidden:
        lines += ["", "Not shown here (in the CSV): " + ", ".join(g[0] for g in hidden) + "."]
    return "\n".join(lines) + "\n"


def save_table(rows: list[dict], folder, name: str, columns=None, digits: int = 3, title: str | None = None):
    """Write ``<folder>/<name>.csv`` (every column, full precision) and ``<name>.md`` (:func:`to_markdown`,
    for reading); returns the Markdown text."""
    folder = Path(folder)
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(folder / f"{name}.csv", buf.getvalue())
    md = (f"**{title}**\n\n" if title else "") + to_markdown(rows, columns, digits)
    atomic_write_text(folder / f"{name}.md", md)
    return md


def show(md: str) -> None:
    """Show a Markdown table from :func:`save_table`: rendered in a Jupyter kernel, printed as text elsewhere.

    The display carries both forms (text/markdown and text/plain), so papermill logs, HTML exports and
    terminals all see the table."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or "IPKernelApp" not in shell.config:
        print(md)
        return
    from IPython.display import display
    display({"text/markdown": md, "text/plain": md}, raw=True)


def read_table(path) -> list[dict]:
    """A CSV written by :func:`save_table`, numbers parsed back to floats where possible."""
    def num(v):
        try:
            return float(v)
        except ValueError:
            return v
    with open(path) as f:
        return [{k: num(v) for k, v in r.items()} for r in csv.DictReader(f)]
