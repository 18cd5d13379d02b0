"""Execute one numbered notebook headlessly with papermill; its executed copy is the result readers open.

    python scripts/run_notebook.py notebooks/03_train.ipynb --profile cpu [--root DIR] [--html] [--set KEY=VALUE ...]

The executed copy goes to ``figures/<profile>/<name>.ipynb`` only when every cell succeeded (a
failed run is kept as ``<name>.failed.ipynb`` and the script names the notebook and exits 1), so
``make`` treats a failed notebook as not done and re-runs only what is out of date. The notebook's
tables and figures are written to a staging folder (lib.infra.paths) and moved into ``figures/<profile>/``
only on success: a failed notebook leaves the previous good outputs in place. The executed copy and the
text outputs (Markdown, CSV) carry no absolute path of the producing machine (:func:`portable`): paths
under the repository or the output root become relative, the staging folder becomes ``figures/<profile>``;
the copy's relative links are rewritten for its place under ``figures/<profile>/``, so GitHub, nbviewer
and Colab render it with working links; its progress bars are at their last state, one line each
(scripts/tidy_outputs.py). ``--html`` also writes an HTML export (not committed). A marker
``data/runs/<profile>/.notebooks/<name>.done`` records a success next to the runs it wrote, so that
``make`` runs the notebook again when ``data/runs`` has been deleted.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lib.infra import paths  # noqa: E402
from tidy_outputs import tidy  # noqa: E402  (scripts/tidy_outputs.py: progress bars at their last state)


def portable(text: str, replacements: list[tuple[str, str]]) -> str:
    """``text`` with each absolute prefix replaced (longest first): no machine path in a committed result."""
    for old, new in sorted(replacements, key=lambda r: -len(r[0])):
        text = text.replace(old + "/", new + "/" if new else "")
        text = re.sub(re.escape(old) + r"(?![\w.-])", new or ".", text)  # the folder itself, not /rootfs
    return text


def _replacements(profile: str, out_dir: Path, stage: Path, root: Path | None) -> list[tuple[str, str]]:
    shown = f"figures/{profile}"
    pairs = [(stage, shown), (out_dir, shown), (ROOT, "")]
    if root is not None:
        pairs.append((root, ""))
    pairs += [(Path(sys.prefix), ".venv"), (Path(sys.base_prefix), "<python>"), (Path.home(), "~")]
    out = []
    for p, new in pairs:  # both spellings: as given and with symlinks resolved
        for s in {str(p), str(Path(p).resolve())}:
            if len(s) > 1:
                out.append((s, new))
    return out


def _relink(nb_text: str) -> str:
    """Relative links written for notebooks/ climb one folder; from figures/<profile>/ they climb two."""
    return nb_text.replace("](../", "](../../").replace('src=\\"../', 'src=\\"../../')


def run(nb: Path, profile: str, root: Path | None = None, html: bool = False, overrides=()) -> Path:
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    root = Path(root).resolve() if root else None  # the kernel runs in notebooks/: hand it an absolute root
    P = paths.Paths(profile, root)
    out_dir = P.published_figures
    stage = out_dir / ".staging" / nb.stem
    shutil.rmtree(stage, ignore_errors=True)  # what an earlier failed run of this notebook left
    try:
        stage.mkdir(parents=True)
    except OSError as e:
        print(f"FAILED: notebook {nb.name}: the output root {P.base} cannot be written ({e.strerror or e}: "
              f"{e.filename or out_dir}); pass --root a writable folder", file=sys.stderr)
        raise SystemExit(1) from None
    final, partial = out_dir / nb.name, out_dir / (nb.stem + ".failed.ipynb")
    os.environ.setdefault("S2DM_PLAIN_BARS", "1")  # the kernel inherits it: text bars, not widgets (lib.infra.progress)
    params = {"profile": profile, "root": str(root) if root else "", "overrides": list(overrides)}
    t0 = time.time()
    print(f"-- {nb.name} (profile {profile})", flush=True)
    os.environ.update({paths.STAGE_FOR: str(out_dir.resolve()), paths.STAGE_DIR: str(stage.resolve())})
    try:  # the kernel inherits the environment: the notebook's Paths.figures is the staging folder
        pm.execute_notebook(str(nb), str(partial), parameters=params, cwd=str(nb.parent), kernel_name="python3",
                            progress_bar=False, log_output=bool(os.environ.get("NB_LOG")))
    except Exception as e:
        msg = str(e).strip().splitlines()
        print(f"FAILED: notebook {nb.name} at profile {profile} ({msg[-1] if msg else type(e).__name__}); "
              f"the partial run is {partial}; its tables and figures were not published (they are in {stage})",
              file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        for k in (paths.STAGE_FOR, paths.STAGE_DIR):
            os.environ.pop(k, None)
    # What a reader sees: each progress bar once, at its last state, and at most a few stream outputs per cell.
    nbformat.write(nbformat.from_dict(tidy(nbformat.read(partial, as_version=4))), partial)
    subs = _replacements(profile, out_dir, stage, root)
    for f in [partial, *(p for p in stage.rglob("*") if p.suffix in (".md", ".csv", ".txt", ".json", ".svg"))]:
        text = f.read_text(encoding="utf-8")
        new = portable(text, subs)
        if f == partial:
            new = _relink(new)
        if new != text:
            f.write_text(new, encoding="utf-8")
    # The export runs before anything is published, and the executed copy is put in place last: a failed
    # export leaves the notebook not done (make runs it again), with one line saying why.
    try:
        body = HTMLExporter().from_notebook_node(nbformat.read(partial, as_version=4))[0] if html else None
        publish(stage, out_dir)
        if body is not None:
            (out_dir / (nb.stem + ".html")).write_text(body)
    except Exception as e:
        print(f"FAILED: notebook {nb.name} ran, but its HTML export failed ({type(e).__name__}: "
              f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}); run it again (make does), or leave "
              f"out --html; the executed run is {partial}", file=sys.stderr)
        raise SystemExit(1) from None
    os.replace(partial, final)
    paths.write_notebook_marker(P, nb.stem, t0 - 2)  # 2 s: coarse file-system clocks
    print(f"   {nb.name} done in {time.time() - t0:.0f} s -> {final}", flush=True)
    return final


def publish(stage: Path, out_dir: Path):
    """Move every file of the staging folder to the same place under ``out_dir``, then drop the folder."""
    for f in sorted(p for p in stage.rglob("*") if p.is_file()):
        dest = out_dir / f.relative_to(stage)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)
    shutil.rmtree(stage, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebook", type=Path)
    p.add_argument("--profile", required=True)
    p.add_argument("--root", type=Path, default=None, help="output root instead of the repository (tests)")
    p.add_argument("--html", action="store_true", help="also export the executed notebook to HTML")
    p.add_argument("--no-html", action="store_true", help="the default (kept for older callers)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override handed to the notebook's `overrides` parameter (repeatable)")
    a = p.parse_args()
    run(a.notebook.resolve(), a.profile, a.root.resolve() if a.root else None, html=a.html and not a.no_html,
        overrides=a.overrides)


if __name__ == "__main__":
    main()
