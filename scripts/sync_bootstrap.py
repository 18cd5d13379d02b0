"""Copy the one setup cell, the badges and the repository address into every place that shows them.

    python scripts/sync_bootstrap.py          # rewrite what is out of date
    python scripts/sync_bootstrap.py --check  # only report it (exit 1), as tests/test_bootstrap.py does

The single sources: ``scripts/bootstrap_cell.py`` (the first code cell of every notebook, whose
``REPO_URL`` default is the repository's address) and ``BRANCH`` below. From them this script writes,
in each ``notebooks/[0-9][0-9]_*.ipynb``: the setup cell (inserted before the first code cell if
absent; collapsed in JupyterLab, a form on Colab), the "Open in Colab" / "launch binder" badge line under the title, and the typed, commented
``profile``/``root`` lines of the ``parameters`` cell; in README.md the badges of the notebook table;
the address in CITATION.cff (and in a BibTeX url in the README, if any). A fork changes ``REPO_URL`` in
``scripts/bootstrap_cell.py`` and runs this script.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CELL_FILE = ROOT / "scripts" / "bootstrap_cell.py"
BRANCH = "main"
CELL_ID = "setup"
CELL_MARKS = ("#@title Setup", "# Setup: the same first cell in every notebook")  # now, and before
# The setup cell stays out of the way: collapsed in JupyterLab, a one-line form on Colab (its #@title line).
CELL_METADATA = {"jupyter": {"source_hidden": True}, "cellView": "form"}
BADGE_MARK = "[![Open in Colab]"
# The parameters cell: papermill overrides these; `papermill --help-notebook` shows the type and comment.
# (No "=" in the comments: papermill's parser skips lines with two.)
PARAMETER_LINES = {
    "profile": 'profile: str = os.environ.get("S2DM_PROFILE", "cpu")  '
               '# ci, cpu, gpu or paper (docs/profiles.md); Binder sets S2DM_PROFILE to ci',
    "root": 'root: str = ""  # output root for figures/ and data/runs/; empty: the repository',
}


def cell_source() -> str:
    return CELL_FILE.read_text().rstrip("\n")


def repo_url() -> str:
    m = re.search(r'os\.environ\.get\("S2DM_REPO_URL", "([^"]+)"\)', cell_source())
    if not m:
        raise SystemExit(f"sync_bootstrap: no REPO_URL default found in {CELL_FILE}")
    return m[1]


def owner_name(url: str) -> str:
    m = re.fullmatch(r"https://github\.com/([^/\s]+/[^/\s]+?)(\.git)?/?", url)
    if not m:
        raise SystemExit(f"sync_bootstrap: REPO_URL {url!r} is not https://github.com/OWNER/NAME "
                         "(Colab and Binder badges need a GitHub repository)")
    return m[1]


def badges(nb_name: str, url: str) -> str:
    """The Markdown badge line of one notebook (also used in the README's table)."""
    repo = owner_name(url)
    colab = f"https://colab.research.google.com/github/{repo}/blob/{BRANCH}/notebooks/{nb_name}"
    binder = f"https://mybinder.org/v2/gh/{repo}/{BRANCH}?labpath=notebooks%2F{nb_name}"
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
            f"[![launch binder](https://mybinder.org/badge_logo.svg)]({binder})")


def title_badge_line(nb_name: str, url: str) -> str:
    return (f"{badges(nb_name, url)} · results at profile `cpu`: "
            f"[figures/cpu/{nb_name}](../figures/cpu/{nb_name})")


def sync_notebook(path: Path, url: str):
    """(changed, notebook): one notebook brought up to date in memory; main() writes it."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    title = nb.cells[0]
    if title.cell_type != "markdown" or not title.source.startswith("# "):
        raise SystemExit(f"sync_bootstrap: {path.name}: the first cell must be the markdown title (# ...)")
    lines = [ln for ln in title.source.split("\n") if not ln.startswith(BADGE_MARK)]
    while len(lines) > 2 and lines[1] == "" and lines[2] == "":  # the blank line the old badge line left
        del lines[1]
    title.source = "\n".join([lines[0], "", title_badge_line(path.name, url), *lines[1:]])
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    first = nb.cells[code[0]] if code else None
    if first is not None and (first.get("id") == CELL_ID or first.source.startswith(CELL_MARKS)):
        first.source = cell_source()
    else:
        first = nbformat.v4.new_code_cell(cell_source(), id=CELL_ID)
        nb.cells.insert(code[0] if code else len(nb.cells), first)
    first.metadata.update(CELL_METADATA)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(params) != 1:
        raise SystemExit(f"sync_bootstrap: {path.name}: needs exactly one cell tagged `parameters`")
    src = params[0].source.split("\n")
    for i, ln in enumerate(src):
        m = re.match(r"(\w+)\s*(:[^=]*)?=", ln)
        if m and m[1] in PARAMETER_LINES:
            src[i] = PARAMETER_LINES[m[1]]
    params[0].source = "\n".join(src)
    return nbformat.writes(nb) != before, nb


def sync_readme(text: str, url: str, names: list[str]) -> tuple[str, list[str]]:
    """The README with each notebook row's badge column regenerated; also the notebooks lacking a row."""
    found, out = set(), []
    for ln in text.split("\n"):
        m = re.match(r"\| `(\d\d_\w+)` \|", ln)
        if m and f"{m[1]}.ipynb" in names:
            cells = ln.split(" | ")
            if len(cells) >= 3:
                cells[1] = badges(f"{m[1]}.ipynb", url)
                ln = " | ".join(cells)
                found.add(f"{m[1]}.ipynb")
        out.append(ln)
    text = "\n".join(out)
    text = re.sub(r"(url\s*=\s*\{)https://github\.com/[^}]*(\})", lambda m: m[1] + url + m[2], text)
    return text, [n for n in names if n not in found]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="report what is out of date; write nothing")
    a = p.parse_args(argv)
    url = repo_url()
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    stale = []
    for path in notebooks:
        changed, nb = sync_notebook(path, url)
        if changed:
            stale.append(str(path.relative_to(ROOT)))
            if not a.check:
                path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    readme = ROOT / "README.md"
    text, no_row = sync_readme(readme.read_text(encoding="utf-8"), url, [p.name for p in notebooks])
    cff = ROOT / "CITATION.cff"
    cff_text = re.sub(r"(?m)^(repository-code:\s*).*$", lambda m: f'{m[1]}"{url}"', cff.read_text(encoding="utf-8"))
    for f, new in ((readme, text), (cff, cff_text)):
        if new != f.read_text(encoding="utf-8"):
            stale.append(f.name)
            if not a.check:
                f.write_text(new, encoding="utf-8")
    for n in no_row:
        print(f"sync_bootstrap: README.md's notebook table has no row for {n}: add "
              f"'| `{n[:-6]}` | x | [results](figures/cpu/{n}) | what it shows |' and run this script again", file=sys.stderr)
    if a.check:
        for s in stale:
            print(f"sync_bootstrap: {s} is out of date: run python scripts/sync_bootstrap.py", file=sys.stderr)
        return 1 if stale or no_row else 0
    print(f"sync_bootstrap: {len(stale)} file(s) updated" + (f": {', '.join(stale)}" if stale else ""))
    return 1 if no_row else 0


if __name__ == "__main__":
    raise SystemExit(main())
