"""Execute one numbered notebook headlessly with papermill, then export it to HTML.

    python scripts/run_notebook.py notebooks/03_train.ipynb --profile cpu [--root DIR]

The executed copy goes to ``figures/<profile>/<name>.ipynb`` only when every cell succeeded (a
failed run is kept as ``<name>.failed.ipynb`` and the script names the notebook and exits 1), so
``make`` treats a failed notebook as not done and re-runs only what is out of date.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(nb: Path, profile: str, root: Path | None = None, html: bool = True) -> Path:
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    out_dir = (root or ROOT) / "figures" / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    final, partial = out_dir / nb.name, out_dir / (nb.stem + ".failed.ipynb")
    os.environ.setdefault("S2DM_PLAIN_BARS", "1")  # the kernel inherits it: text bars, not widgets (lib.progress)
    params = {"profile": profile, "root": str(root) if root else ""}
    t0 = time.time()
    print(f"-- {nb.name} (profile {profile})", flush=True)
    try:
        pm.execute_notebook(str(nb), str(partial), parameters=params, cwd=str(nb.parent), kernel_name="python3",
                            progress_bar=False, log_output=bool(os.environ.get("NB_LOG")))
    except Exception as e:
        msg = str(e).strip().splitlines()
        print(f"FAILED: notebook {nb.name} at profile {profile} ({msg[-1] if msg else type(e).__name__}); "
              f"the partial run is {partial}", file=sys.stderr)
        raise SystemExit(1)
    os.replace(partial, final)
    if html:
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(final, as_version=4))
        (out_dir / (nb.stem + ".html")).write_text(body)
    print(f"   {nb.name} done in {time.time() - t0:.0f} s -> {final}", flush=True)
    return final


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebook", type=Path)
    p.add_argument("--profile", required=True)
    p.add_argument("--root", type=Path, default=None, help="output root instead of the repository (tests)")
    p.add_argument("--no-html", action="store_true")
    a = p.parse_args()
    run(a.notebook.resolve(), a.profile, a.root, html=not a.no_html)


if __name__ == "__main__":
    main()
