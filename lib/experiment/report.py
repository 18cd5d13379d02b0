"""Saving what the notebooks show: figures as PNG and PDF, tables as CSV and Markdown."""
from __future__ import annotations

import csv
import io
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


def _fmt(v, digits):
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def to_markdown(rows: list[dict], columns=None, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts sharing keys)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, ""), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def save_table(rows: list[dict], folder, name: str, columns=None, digits: int = 4, title: str | None = None):
    """Write ``<folder>/<name>.csv`` and ``<name>.md``; returns the Markdown text."""
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
