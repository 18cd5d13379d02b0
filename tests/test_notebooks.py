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
