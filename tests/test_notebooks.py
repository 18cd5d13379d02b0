"""Every numbered notebook, executed in order through papermill at profile ``ci``.

The notebooks assert what they derive; they run in one temporary output root, so later notebooks
read what earlier ones wrote (as under ``make reproduce``), and nothing is written to the repository."""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import tidy_outputs  # noqa: E402  (scripts/tidy_outputs.py)

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
    written = [p for p in (out_root / "figures" / "ci").glob(f"{nb.stem[:2]}_*") if p.suffix in (".md", ".csv", ".ipynb")]
    leaks = {p.name: absolute_paths(p)[:3] for p in written if absolute_paths(p) or str(out_root) in p.read_text()}
    assert not leaks, f"{nb.name}: outputs name absolute paths (run_notebook.portable misses them): {leaks}"
    executed = nbformat.read(out_root / "figures" / "ci" / nb.name, as_version=4)
    assert tidy_outputs.is_tidy(executed), f"{nb.name}: progress frames or > 10 stream outputs in a cell"


def test_missing_inputs_name_the_producing_notebook(tmp_path):
    """A notebook whose inputs are missing says which notebook to run first."""
    nb = ROOT / "notebooks" / "05_fid_tables.ipynb"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebook.py"), str(nb), "--profile", "ci",
                        "--root", str(tmp_path), "--no-html"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert "05_fid_tables" in r.stderr and "04_sampler_sweeps" in r.stderr


RESULT_SUFFIXES = (".png", ".csv", ".md")


def _committed_names(folder: Path) -> set:
    """The file names git tracks in ``folder`` (what a clone holds; make reproduce also leaves the PDFs
    there, which .gitignore keeps out), or the folder's files outside a git checkout."""
    r = subprocess.run(["git", "ls-files", "-z", "--", str(folder)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 or not (folder.resolve().is_relative_to(ROOT)):
        return {p.name for p in folder.iterdir()}
    return {Path(p).name for p in r.stdout.split("\0") if p}


def result_mismatches(written: Path, committed: Path, notebooks=NOTEBOOKS) -> list[str]:
    """What is wrong with ``committed`` (figures/cpu/) given the files the notebooks ``written``: every PNG
    and table present, none orphaned, one executed ``.ipynb`` per notebook (what GitHub renders), nothing
    else but README.md (no HTML, PDFs or failed runs)."""
    names = _committed_names(committed)
    want = {p.name for p in written.iterdir() if p.suffix in RESULT_SUFFIXES}
    have = {n for n in names if Path(n).suffix in RESULT_SUFFIXES} - {"README.md"}
    problems = []
    if want - have:
        problems.append(f"missing from {committed}: {sorted(want - have)}")
    if have - want:
        problems.append(f"orphaned in {committed} (no notebook writes them): {sorted(have - want)}")
    executed = {n for n in names if n.endswith(".ipynb") and not n.endswith(".failed.ipynb")}
    if executed != {nb.name for nb in notebooks}:
        problems.append(f"the executed notebooks in {committed} do not match the notebooks: missing "
                        f"{sorted({nb.name for nb in notebooks} - executed)}, extra {sorted(executed - {nb.name for nb in notebooks})}")
    other = names - have - executed - {"README.md"}
    if other:
        problems.append(f"{committed} holds files that should not be committed: {sorted(other)}")
    return problems


def test_result_mismatches_finds_missing_orphaned_and_stray_files(tmp_path):
    w, c = tmp_path / "w", tmp_path / "c"
    w.mkdir(), c.mkdir()
    for n in ("05_a.png", "05_t.csv", "05_t.md", "05_a.pdf", "05_x.ipynb"):
        (w / n).write_text("x")
    for n in ("05_a.png", "05_t.csv", "05_t.md"):
        (c / n).write_text("x")
    assert result_mismatches(w, c, notebooks=[]) == []
    assert "05_fid_tables.ipynb" in " ".join(result_mismatches(w, c, notebooks=[Path("05_fid_tables.ipynb")]))
    (c / "05_t.md").unlink()
    (c / "06_old.png").write_text("x")
    (c / "05_a.pdf").write_text("x")
    (c / "05_fid_tables.html").write_text("x")
    got = " | ".join(result_mismatches(w, c, notebooks=[Path("05_fid_tables.ipynb"), Path("06_x.ipynb")]))
    assert "missing" in got and "05_t.md" in got and "orphaned" in got and "06_old.png" in got
    assert "executed notebooks" in got and "05_a.pdf" in got and "05_fid_tables.html" in got


def test_committed_cpu_results_match_what_the_notebooks_write(out_root):
    """figures/cpu/ (committed from a full `make reproduce PROFILE=cpu`) holds exactly the PNGs and tables
    the notebooks write (the same names at every profile; here: what they wrote at ci above). Runs after
    the notebook tests of this module."""
    ci = out_root / "figures" / "ci"
    if not all((ci / nb.name).exists() for nb in NOTEBOOKS):
        pytest.skip("needs every notebook's ci outputs: run the whole of tests/test_notebooks.py")
    committed = ROOT / "figures" / "cpu"
    if not committed.is_dir():
        pytest.skip("figures/cpu/ is not committed yet (the results of make reproduce PROFILE=cpu)")
    problems = result_mismatches(ci, committed)
    assert not problems, "\n".join(problems)


def test_worker_processes_measure_what_this_process_measures(out_root):
    """The fan-out (lib.experiment.workers) gives the same rows in 2 worker processes as in this process,
    on the ci runs the notebooks above trained: image cells (sweep), the related-methods cells and the
    dose–response cells (toy and images). Runs after the notebook tests of this module."""
    from lib.experiment import dose, related_sweep, sweep
    from lib.experiment.evaluate import ImageEvaluator
    from lib.infra.config import get_config, with_overrides
    from lib.infra.paths import Paths

    if not (out_root / "figures" / "ci" / "06_related_methods.ipynb").exists():
        pytest.skip("needs the ci runs of notebooks 03–06: run the whole of tests/test_notebooks.py")
    paths = Paths("ci", out_root)
    one, two = (with_overrides(get_config("ci"), {"experiment.workers": w}) for w in (1, 2))
    ev = ImageEvaluator(one, paths, progress=False)
    steps = [one.experiment.headline_steps[0]]
    rows = [sweep.image_sweep(ev, c, paths, ["ddim"], steps, seeds=[0, 1], progress=False) for c in (one, two)]
    assert len(rows[0]) == 4 and json.loads(json.dumps(rows[0])) == rows[1]
    cells = []
    for c in (one, two):
        plan = related_sweep.Plan.of(c)
        cc = related_sweep.Cells(plan, paths, ImageEvaluator(plan.cfg, paths, progress=False))
        cc.seed_cells("A", progress=False)
        cells.append(cc.rows)
    assert cells[0] and json.loads(json.dumps(cells[0])) == cells[1]
    d = [dose.run_cells(c, paths, progress=False) for c in (one, two)]
    assert d[0]["dose"] and d[0] == d[1]


# An absolute path in a committed result names the producing machine: /home/…, /work/…, /content/…, a
# PosixPath repr, the staging folder. URLs (scheme://) and embedded images are not paths.
_ABSOLUTE = re.compile(r"(?<![\w:/.~\\])/(?:[\w.+-]+/){2,}|PosixPath\('/|/\.staging/")


def absolute_paths(path: Path) -> list[str]:
    """The absolute-path-like strings in a committed text result (for an .ipynb: sources and text outputs)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".ipynb":
        nb = json.loads(text)
        parts = [json.dumps(nb.get("metadata", {}))]  # papermill records input and output paths there
        for c in nb.get("cells", []):
            parts.append("".join(c.get("source", "")))
            for o in c.get("outputs", []):
                parts.append("".join(o.get("text", "")))
                for mime, v in o.get("data", {}).items():
                    if not mime.startswith("image/"):
                        parts.append(v if isinstance(v, str) else "".join(v) if isinstance(v, list) else json.dumps(v))
        text = "\n".join(parts)
    found = [m.group(0) for m in _ABSOLUTE.finditer(text)]
    if str(ROOT) in text:
        found.append(str(ROOT))
    return found


def test_absolute_paths_are_found(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": "x", "outputs": [
        {"output_type": "execute_result", "data": {"text/plain": "PosixPath('/home/u/repo/figures/cpu')",
                                                    "image/png": "iVBOR/abc/def/ghi"}}]}]}
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    (tmp_path / "t.md").write_text("**08 table of /srv/alice/data/runs/cpu/x** see https://a.org/b/c/d and s/step\n")
    (tmp_path / "ok.md").write_text("| a/b | https://x.org/y/z/w | " + "../" * 2 + "docs/method.md |\n")
    assert absolute_paths(tmp_path / "a.ipynb") and [p[:11] for p in absolute_paths(tmp_path / "t.md")] == ["/srv/alice/"]
    assert absolute_paths(tmp_path / "ok.md") == []


def test_committed_cpu_results_carry_no_absolute_path():
    committed = ROOT / "figures" / "cpu"
    if not committed.is_dir():
        pytest.skip("figures/cpu/ is not committed yet (the results of make reproduce PROFILE=cpu)")
    bad = {n: absolute_paths(committed / n)[:3] for n in sorted(_committed_names(committed))
           if Path(n).suffix in (".md", ".csv", ".ipynb") and absolute_paths(committed / n)}
    assert not bad, f"committed results name the producing machine's paths (scripts/run_notebook.py strips them): {bad}"
