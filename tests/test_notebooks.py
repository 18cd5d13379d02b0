"""Every numbered notebook, executed in order through papermill at profile ``ci``.

The notebooks assert what they derive; they run in one temporary output root, so later notebooks
read what earlier ones wrote (as under ``make reproduce``), and nothing is written to the repository."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    return tmp_path_factory.mktemp("nbroot")


def test_notebooks_are_committed_without_outputs():
    assert NOTEBOOKS, "no notebooks found"
    for nb_path in NOTEBOOKS:
        nb = nbformat.read(nb_path, as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and "profile" in params[0].source, f"{nb_path.name}: needs one parameters cell"
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, f"{nb_path.name} carries outputs"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_profile_ci(nb, out_root):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebook.py"), str(nb), "--profile", "ci",
                        "--root", str(out_root), "--no-html"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, f"{nb.name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    assert (out_root / "figures" / "ci" / nb.name).exists()
    assert list((out_root / "figures" / "ci").glob(f"{nb.stem[:2]}_*.png")), f"{nb.name} saved no figure"


def test_missing_inputs_name_the_producing_notebook(tmp_path):
    """A notebook whose inputs are missing says which notebook to run first."""
    nb = ROOT / "notebooks" / "05_fid_tables.ipynb"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebook.py"), str(nb), "--profile", "ci",
                        "--root", str(tmp_path), "--no-html"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert "05_fid_tables" in r.stderr and "04_sampler_sweeps" in r.stderr


RESULT_SUFFIXES = (".png", ".csv", ".md")


def test_committed_cpu_results_match_what_the_notebooks_write(out_root):
    """figures/cpu/ (committed from a full `make reproduce PROFILE=cpu`) holds exactly the PNGs and tables
    the notebooks write (the same names at every profile; here: what they wrote at ci above), plus,
    if any HTML is committed, one per notebook. Runs after the notebook tests of this module."""
    ci = out_root / "figures" / "ci"
    ran = [nb for nb in NOTEBOOKS if (ci / nb.name).exists()]
    if len(ran) < len(NOTEBOOKS):
        pytest.skip("needs every notebook's ci outputs: run the whole of tests/test_notebooks.py")
    committed = ROOT / "figures" / "cpu"
    if not committed.is_dir():
        pytest.skip("figures/cpu/ is not committed yet (the results of make reproduce PROFILE=cpu)")
    written = {p.name for p in ci.iterdir() if p.suffix in RESULT_SUFFIXES}
    have = {p.name for p in committed.iterdir() if p.suffix in RESULT_SUFFIXES}
    assert not written - have, f"missing from figures/cpu/: {sorted(written - have)}"
    assert not have - written, f"orphaned in figures/cpu/ (no notebook writes them): {sorted(have - written)}"
    html = {p.name for p in committed.glob("*.html")}
    if html:
        assert html == {nb.stem + ".html" for nb in NOTEBOOKS}, f"HTML in figures/cpu/ does not match the notebooks: {sorted(html)}"
    other = {p.name for p in committed.iterdir()} - have - html - {"README.md"}
    assert not other, f"figures/cpu/ holds files that should not be committed: {sorted(other)}"
