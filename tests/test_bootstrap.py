"""The notebooks as their users open them: JupyterLab, Colab, Binder (README: "Opening the notebooks").

* every notebook's first code cell is ``scripts/bootstrap_cell.py``, badges and parameters are in sync;
* notebook 01 runs under papermill in an interpreter where the project is *not* installed and
  PYTHONPATH is unset, from ``notebooks/``: only the setup cell makes ``lib`` importable;
* the cell's Colab branch clones a local ``file://`` copy of the repository and installs nothing
  that is present (no network);
* ``binder/`` is CPU-only and carries the pins; the Makefile refuses a Python older than 3.11;
* notebooks are stored without outputs through the git filter."""
import json
import os
import re
import shutil
import site
import stat
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL = (ROOT / "scripts" / "bootstrap_cell.py").read_text().rstrip("\n")


def clean_env(**extra) -> dict:
    """The environment of a user who never installed the project: no PYTHONPATH, no user site."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "S2DM_", "JUPYTER", "MAKE", "MFLAGS"))}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A fresh virtual environment that sees this environment's packages but not the project.

    Its site-packages holds one .pth naming the shared site-packages folder(s) as plain paths: Python
    then imports torch, papermill, ... from there but never processes the .pth files inside them,
    so the editable install's finder (``__editable__*.pth``) does not run."""
    d = tmp_path_factory.mktemp("barevenv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d)], check=True)
    py = d / "bin" / "python"
    own = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip())
    shared = [str(Path(p).resolve()) for p in site.getsitepackages()]
    (own / "shared_packages.pth").write_text("\n".join(shared) + "\n")
    return py


def test_every_notebook_starts_with_the_one_setup_cell():
    assert NOTEBOOKS
    assert len(CELL.splitlines()) <= 6, "the setup cell is shown in full on GitHub: at most 6 lines (logic: scripts/bootstrap.py)"
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert first.source == CELL, f"{p.name}: first code cell differs from scripts/bootstrap_cell.py"
        # out of the way: collapsed in JupyterLab, a one-line form on Colab
        assert first.metadata.get("jupyter", {}).get("source_hidden") is True, p.name
        assert first.metadata.get("cellView") == "form" and first.source.startswith("#@title "), p.name
        assert "parameters" in nb.cells[nb.cells.index(first) + 1].metadata.get("tags", []), p.name
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_bootstrap.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_table_carries_both_badges_per_notebook():
    readme = (ROOT / "README.md").read_text()
    for p in NOTEBOOKS:
        row = next((ln for ln in readme.splitlines() if ln.startswith(f"| `{p.stem}` |")), None)
        assert row, f"README's notebook table has no row for {p.stem}"
        assert re.search(rf"\(https://colab\.research\.google\.com/github/[^)]+/notebooks/{p.name}\)", row), row
        assert re.search(rf"\(https://mybinder\.org/v2/gh/[^)]+labpath=notebooks%2F{p.name}\)", row), row
        title = nbformat.read(p, as_version=4).cells[0].source
        assert "colab-badge.svg" in title and "mybinder.org/badge_logo.svg" in title, p.name


def test_parameters_are_typed_and_commented():
    import papermill as pm
    for p in NOTEBOOKS:
        params = pm.inspect_notebook(str(p))
        assert {"profile", "root"} <= set(params), p.name
        for name, spec in params.items():
            assert spec["inferred_type_name"] not in ("None", None), f"{p.name}: {name} has no type hint"
            assert spec["help"].strip(), f"{p.name}: {name} has no comment"
        assert "S2DM_PROFILE" in params["profile"]["default"], p.name


def test_bare_interpreter_cannot_import_lib(bare_python):
    """The premise of the next test: without the setup cell, `lib` is not importable there."""
    r = subprocess.run([str(bare_python), "-c", "import papermill, torch, ipykernel\nimport lib"],
                       capture_output=True, text=True, cwd=ROOT / "notebooks", env=clean_env())
    assert r.returncode == 1 and "No module named 'lib'" in r.stderr, r.stderr[-2000:]


def test_notebook_01_runs_where_the_project_is_not_installed(bare_python, tmp_path):
    kernels = tmp_path / "jupyter" / "kernels" / "bare"
    kernels.mkdir(parents=True)  # a kernel on exactly that interpreter, whatever other kernelspecs exist
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(bare_python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bare", "language": "python"}))
    out = tmp_path / "01_out.ipynb"
    # the profile comes from the environment, as on Binder: no `-p profile`
    env = clean_env(S2DM_PROFILE="ci", S2DM_PLAIN_BARS="1", JUPYTER_PATH=str(tmp_path / "jupyter"))
    r = subprocess.run([str(bare_python), "-m", "papermill", "01_noise_schedule.ipynb", str(out), "-k", "bare",
                        "--cwd", ".", "-p", "root", str(tmp_path / "root"), "--no-progress-bar"],
                       capture_output=True, text=True, cwd=ROOT / "notebooks", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-6000:]
    nb = nbformat.read(out, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    printed = "".join(o.get("text", "") for o in setup.outputs)
    assert f"lib: {ROOT / 'lib'}" in printed, printed
    assert list((tmp_path / "root" / "figures" / "ci").glob("01_*.png")), "no figure at profile ci"
    tables = [o for c in nb.cells for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert tables and "|---|" in tables[0]["data"]["text/markdown"], "tables are not shown as Markdown"


def git_repo_or_skip():
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                                     capture_output=True).returncode:
        pytest.skip("needs git and the repository as a git checkout")


def test_colab_branch_clones_the_repository_and_installs_nothing_present(bare_python, tmp_path):
    git_repo_or_skip()
    work, clone = tmp_path / "content", tmp_path / "content" / "s2dm-companion"
    work.mkdir()
    env = clean_env(S2DM_COLAB="1", S2DM_REPO_URL=f"file://{ROOT}", S2DM_CLONE_DIR=str(clone))
    check = CELL + "\nimport lib.experiment.report\nprint('LIBFILE', lib.experiment.report.__file__)\n"
    for _attempt in (1, 2):  # the second run finds the clone and does not clone again
        r = subprocess.run([str(bare_python), "-c", check], capture_output=True, text=True, cwd=work, env=env,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-4000:]
        assert f"LIBFILE {clone / 'lib' / 'experiment' / 'report.py'}" in r.stdout, r.stdout
        # the bare interpreter has no pip: reaching pip at all would have failed
        assert "nothing to install" in r.stdout, r.stdout
    assert (clone / ".git").is_dir() and (clone / "notebooks" / "01_noise_schedule.ipynb").is_file()


def test_colab_branch_says_what_to_do_when_the_clone_fails(bare_python, tmp_path):
    git_repo_or_skip()
    env = clean_env(S2DM_COLAB="1", S2DM_REPO_URL=f"file://{tmp_path}/no-such-repo",
                    S2DM_CLONE_DIR=str(tmp_path / "clone"))
    r = subprocess.run([str(bare_python), "-c", CELL], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "Could not clone" in r.stderr and "S2DM_REPO_URL" in r.stderr and "upload the repository" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_setup_cell_outside_a_repository_and_colab_says_what_to_do(bare_python, tmp_path):
    r = subprocess.run([str(bare_python), "-c", CELL], capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert r.returncode == 1
    assert "ModuleNotFoundError: no module `lib`" in r.stderr and "pip install --no-deps -e ." in r.stderr


def test_install_missing_installs_only_absent_pins_and_never_torch(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# pins\ntorch==0.0.1\ntorchvision==0.0.1\nnumpy==0.0.1\ns2dm-surely-absent-pkg==1.2.3\n")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_missing.py"), "--requirements", str(req),
                        "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmd = next(ln for ln in r.stdout.splitlines() if "dry run:" in ln)
    assert cmd.split()[-1] == "s2dm-surely-absent-pkg==1.2.3" and "numpy" not in cmd and "torch" not in cmd, cmd
    from importlib import metadata
    assert f"holding torch=={metadata.version('torch')}" in r.stdout, r.stdout


def test_install_missing_offline_installs_only_the_named_pins_from_a_wheel_folder(tmp_path):
    """The GPU check's route (make gpu-check with .whl/): the same installer, restricted and offline."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("s2dm-absent-one==1.0\ns2dm-absent-two==2.0\n")
    b.write_text("s2dm-absent-three==3.0\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_missing.py"), "--requirements", str(a),
                        "--requirements", str(b), "--only", "s2dm-absent-one,s2dm_absent_three", "--offline", str(wheels),
                        "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmd = next(ln for ln in r.stdout.splitlines() if "dry run:" in ln).split()
    assert cmd[-2:] == ["s2dm-absent-one==1.0", "s2dm-absent-three==3.0"] and "s2dm-absent-two==2.0" not in cmd
    assert cmd[cmd.index("--find-links") + 1] == str(wheels) and "--no-index" in cmd
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_missing.py"), "--requirements", str(a),
                        "--offline", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert r.returncode == 2 and "nowhere not found" in r.stderr and "Traceback" not in r.stderr


def pins(path: Path) -> dict:
    return dict(re.findall(r"(?m)^([A-Za-z0-9._-]+)==(\S+)", path.read_text()))


def test_binder_is_cpu_only_with_the_same_pins():
    b = ROOT / "binder"
    text = "\n".join(ln for ln in (b / "requirements.txt").read_text().splitlines() if not ln.startswith("#"))
    assert not re.search(r"\+cu\d|cuda|nvidia|/whl/cu", text, re.I), "binder/ names a CUDA wheel"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text.splitlines()
    want, got = pins(ROOT / "requirements.txt"), pins(b / "requirements.txt")
    for name, version in want.items():
        expect = f"{version}+cpu" if name in ("torch", "torchvision") else version
        assert got.get(name) == expect, f"binder/requirements.txt: {name}=={got.get(name)}, want {expect}"
    post, start = b / "postBuild", b / "start"
    assert "pip install --no-deps -e ." in post.read_text()
    assert 'S2DM_PROFILE="${S2DM_PROFILE:-ci}"' in start.read_text() and 'exec "$@"' in start.read_text()
    for f in (post, start):
        assert f.stat().st_mode & stat.S_IXUSR, f"{f} must be executable"
    assert (b / "runtime.txt").read_text().strip() == "python-3.11"


def fake_python(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "python"
    p.write_text(f"#!/bin/sh\necho {version}\n")  # answers the version query whatever it is asked
    p.chmod(0o755)
    return p


def test_make_refuses_a_python_older_than_3_11(tmp_path):
    old = fake_python(tmp_path / "old", "3.10")
    venv = tmp_path / "venv"
    r = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "venv", f"PYTHON={old}", f"VENV={venv}"],
                       capture_output=True, text=True, env=clean_env())
    assert r.returncode != 0
    assert f"PYTHON={old} is Python 3.10" in r.stderr and "PYTHON=python3.12 make test" in r.stderr, r.stderr
    assert not venv.exists(), "the check must come before .venv is built"
    new = fake_python(tmp_path / "new", "3.12")
    r = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "check-python", f"PYTHON={new}"],
                       capture_output=True, text=True, env=clean_env())
    assert r.returncode == 0 and "Python 3.12" in r.stdout, r.stderr


def test_python_requirement_is_stated_as_3_11():
    assert 'requires-python = ">=3.11"' in (ROOT / "pyproject.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "Python 3.11 or newer" in readme and "≥ 3.10" not in readme


def executed_copy(src: Path) -> str:
    nb = json.loads(src.read_text())
    nb["metadata"]["papermill"] = {"duration": 1.0}
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] == "code":
            c["execution_count"] = i
            c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hello\n"]}]
            c["metadata"]["papermill"] = {"status": "completed"}
    nb["cells"].insert(2, {"cell_type": "code", "execution_count": 1, "id": "inj", "outputs": [],
                           "metadata": {"tags": ["injected-parameters"]}, "source": ["profile = \"ci\""]})
    return json.dumps(nb, indent=1)


def test_strip_outputs_is_identity_on_clean_notebooks_and_strips_executed_ones(tmp_path):
    script = ROOT / "scripts" / "strip_outputs.py"
    for p in NOTEBOOKS:  # a clean notebook comes back byte for byte: the filter never churns git status
        r = subprocess.run([sys.executable, str(script), "--stdin"], input=p.read_bytes(), capture_output=True)
        assert r.returncode == 0 and r.stdout == p.read_bytes(), p.name
    dirty = executed_copy(NOTEBOOKS[0])
    r = subprocess.run([sys.executable, str(script), "--stdin"], input=dirty.encode(), capture_output=True)
    assert r.stdout == NOTEBOOKS[0].read_bytes()


def test_git_stores_notebooks_without_outputs_through_the_filter(tmp_path):
    git_repo_or_skip()
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / ".gitattributes", repo)
    shutil.copy(ROOT / "scripts" / "strip_outputs.py", repo / "scripts")
    env = clean_env(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")

    def git(*a):
        return subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, env=env, check=True).stdout
    git("init", "-q")
    r = subprocess.run(["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "hooks"], cwd=repo,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    source, result = Path("notebooks", "x.ipynb"), Path("figures", "cpu", "x.ipynb")  # (no file of this repo)
    for p in (source, result):  # the result under figures/ is committed with its outputs
        (repo / p).parent.mkdir(parents=True)
        (repo / p).write_text(executed_copy(NOTEBOOKS[0]))
    git("add", str(source), str(result))
    kept = json.loads(git("show", f":{result.as_posix()}"))
    assert any(c.get("outputs") for c in kept["cells"]), "the executed copy under figures/ lost its outputs"
    stored = json.loads(git("show", f":{source.as_posix()}"))
    code = [c for c in stored["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert "papermill" not in stored["metadata"] and not any("injected-parameters" in c["metadata"].get("tags", [])
                                                               for c in stored["cells"])


def test_progress_bars_are_widgets_only_in_an_interactive_kernel(tmp_path):
    (tmp_path / "ipywidgets").mkdir()  # a stand-in, so the test does not need ipywidgets installed
    (tmp_path / "ipywidgets" / "__init__.py").write_text("")
    probe = ("import sys, types\n"
             "shell = types.SimpleNamespace(config={'IPKernelApp': {}})\n"
             "sys.modules['IPython'] = types.SimpleNamespace(get_ipython=lambda: shell)\n"
             "from lib.infra import progress\nprint(progress.widgets_wanted())\n")
    for plain, want in (("", "True"), ("1", "False")):
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}", S2DM_PLAIN_BARS=plain)
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
        assert r.stdout.strip() == want, (plain, r.stdout, r.stderr[-2000:])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", "from lib.infra import progress; import tqdm.std; "
                        "print(progress.tqdm is tqdm.std.tqdm)"], capture_output=True, text=True, env=env)
    assert r.stdout.strip() == "True", r.stderr[-2000:]
    assert 'os.environ.setdefault("S2DM_PLAIN_BARS", "1")' in (ROOT / "scripts" / "run_notebook.py").read_text()
