"""An executed notebook's text outputs as a reader sees them in a terminal: each progress bar at its last state.

    python scripts/tidy_outputs.py figures/cpu/*.ipynb          # rewrite in place (what run_notebook.py does)
    python scripts/tidy_outputs.py --check figures/cpu/*.ipynb  # only report untidy ones (exit 1)

A headless kernel sends every redraw of a tqdm bar as its own stream output (``"\\rFD_clf: 1/1000 …"``), and
GitHub, nbviewer and nbconvert show each as a line. :func:`tidy` replays them as a terminal would:
consecutive outputs of one stream are merged, and each line keeps only what follows its last carriage
return (the bar's final frame); a line a bar cleared is dropped. A cell that still holds more than
:data:`MAX_STREAMS` stream outputs (stdout and stderr taking turns) keeps one output per stream, at its
first place. Nothing but stream outputs changes: no number, table or figure. Live bars in JupyterLab
(widgets) and in a terminal are untouched: this runs on the executed copy only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

MAX_STREAMS = 10  # stream outputs per cell, at most


def final_frames(text: str) -> str:
    """``text`` with every line at its last carriage-return frame; a line that a bar cleared is dropped."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if "\r" not in line:
            out.append(line)
            continue
        frames = [f for f in line.split("\r") if f]  # what the terminal shows: the last frame written
        if frames and frames[-1].strip():
            out.append(frames[-1])
        elif i == len(lines) - 1:  # the unterminated end (or a bar that cleared itself): keep the newline before it
            out.append("")
    return "\n".join(out)


def _merged(outputs: list, every: bool) -> list:
    """Stream outputs merged: consecutive ones of one stream, or (``every``) all of a stream at its first place."""
    out, first = [], {}
    for o in outputs:
        if o.get("output_type") != "stream":
            out.append(o)
            continue
        text = o["text"] if isinstance(o["text"], str) else "".join(o["text"])
        prev = first.get(o["name"]) if every else (out[-1] if out and out[-1].get("output_type") == "stream"
                                                  and out[-1]["name"] == o["name"] else None)
        if prev is not None:
            prev["text"] += text
        else:
            o = dict(o, text=text)
            first[o["name"]] = o
            out.append(o)
    return out


def tidy_cell(outputs: list) -> list:
    """One code cell's outputs as the reader should see them (see the module doc)."""
    def clean(outs):
        res = []
        for o in outs:
            if o.get("output_type") == "stream":
                o = dict(o, text=final_frames(o["text"]))
                if not o["text"]:
                    continue
            res.append(o)
        return res

    outs = clean(_merged(outputs, every=False))
    if sum(o.get("output_type") == "stream" for o in outs) > MAX_STREAMS:  # frames interleaved with prints
        outs = clean(_merged(outputs, every=True))
    return outs


def tidy(nb: dict) -> dict:
    """The notebook (a dict as nbformat reads it) with every code cell's outputs tidied, in place."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and cell.get("outputs"):
            cell["outputs"] = tidy_cell(cell["outputs"])
    return nb


def is_tidy(nb: dict) -> bool:
    """No carriage-return frame and at most MAX_STREAMS stream outputs in any cell."""
    for cell in nb.get("cells", []):
        streams = [o for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
        if len(streams) > MAX_STREAMS or any("\r" in "".join(o["text"]) for o in streams):
            return False
    return True


def tidy_file(path: Path, check: bool = False) -> bool:
    """Tidy one .ipynb in place (nbformat's own layout, so nothing else changes); True if it was untidy."""
    import nbformat

    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    if is_tidy(nb):
        return False
    if not check:
        new = nbformat.writes(nbformat.from_dict(tidy(nb)))
        path.write_text(new + ("\n" if text.endswith("\n") else ""), encoding="utf-8")
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--check", action="store_true", help="report untidy notebooks; write nothing")
    a = p.parse_args(argv)
    missing = [str(f) for f in a.notebooks if not f.is_file()]
    if missing:
        print(f"tidy_outputs: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    untidy = [f for f in a.notebooks if tidy_file(f, a.check)]
    for f in untidy:
        print(f"tidy_outputs: {f}: {'has progress frames or too many stream outputs' if a.check else 'tidied'}",
              file=sys.stderr if a.check else sys.stdout)
    return 1 if a.check and untidy else 0


if __name__ == "__main__":
    raise SystemExit(main())
