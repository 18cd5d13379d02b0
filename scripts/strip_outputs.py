"""Strip a notebook of what running it adds: outputs, execution counts, papermill's metadata and cells.

    python3 scripts/strip_outputs.py notebooks/*.ipynb   # in place
    python3 scripts/strip_outputs.py --stdin             # stdin -> stdout: git's clean filter (make hooks)

Plain Python, no packages, so the git filter works before ``.venv`` exists. The JSON is written as
nbformat writes it (indent 1, sorted keys, UTF-8), so a notebook that is already clean comes back
byte for byte and git sees no change. Text that is not a notebook passes through unchanged.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RUN_CELL_METADATA = ("execution", "papermill", "ExecuteTime")
RUN_NB_METADATA = ("papermill", "widgets")


def strip(nb: dict) -> dict:
    """``nb`` (nbformat 4 JSON) without outputs, execution counts, run metadata and papermill's injected cells."""
    nb["cells"] = [c for c in nb.get("cells", []) if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for c in nb["cells"]:
        if c.get("cell_type") == "code":
            c["outputs"], c["execution_count"] = [], None
        for k in RUN_CELL_METADATA:
            c.get("metadata", {}).pop(k, None)
    for k in RUN_NB_METADATA:
        nb.get("metadata", {}).pop(k, None)
    return nb


def strip_text(text: str) -> str:
    """The stripped notebook as text; ``text`` itself when it is not notebook JSON."""
    try:
        nb = json.loads(text)
    except ValueError:
        print("strip_outputs: not JSON, left unchanged", file=sys.stderr)
        return text
    if not isinstance(nb, dict) or "cells" not in nb:
        return text
    return json.dumps(strip(nb), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--stdin"]:
        sys.stdout.buffer.write(strip_text(sys.stdin.buffer.read().decode("utf-8")).encode("utf-8"))
        return 0
    if not args or any(a.startswith("-") for a in args):
        print("usage: strip_outputs.py NOTEBOOK.ipynb ... | --stdin", file=sys.stderr)
        return 2
    for a in args:
        p = Path(a)
        old = p.read_text(encoding="utf-8")
        new = strip_text(old)
        if new != old:
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(new, encoding="utf-8")
            tmp.replace(p)  # atomic: a crash leaves the old notebook, never half of one
            print(f"strip_outputs: stripped {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
