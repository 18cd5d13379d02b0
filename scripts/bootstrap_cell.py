#@title Setup: makes `lib` importable (the repository around this notebook, or a clone on Colab) { display-mode: "form" }
# The same first cell in every notebook: edit scripts/bootstrap_cell.py, then run scripts/sync_bootstrap.py.
# It finds the repository around this notebook, else the installed project, else, on Colab, clones REPO_URL
# and installs only the pinned packages Colab lacks (never torch: scripts/install_missing.py).
import importlib.util, os, subprocess, sys  # noqa: E401
from pathlib import Path

REPO_URL = os.environ.get("S2DM_REPO_URL", "https://github.com/s2dm-companion/s2dm-companion")
repo = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "lib" / "samplers.py").is_file()), None)
if repo is None and importlib.util.find_spec("lib") is None:
    if "google.colab" not in sys.modules and os.environ.get("S2DM_COLAB") != "1":
        raise ModuleNotFoundError("no module `lib`: open this notebook from the repository's notebooks/ folder, "
                                  "or run `pip install --no-deps -e .` at the repository root")
    repo = Path(os.environ.get("S2DM_CLONE_DIR", "/content/s2dm-companion"))
    if not (repo / "lib" / "samplers.py").is_file():
        r = subprocess.run(["git", "clone", "--quiet", "--depth", "1", REPO_URL, str(repo)], capture_output=True, text=True)
        if r.returncode:  # one message saying what to do, not git's traceback
            raise SystemExit(f"Could not clone {REPO_URL} ({(r.stderr.strip().splitlines() or ['git failed'])[-1]}). "
                             f"Set the address and run this cell again: os.environ['S2DM_REPO_URL'] = '<git URL>' "
                             f"in a cell above; or upload the repository's folder to {repo} (Files panel).")
        if not (repo / "lib" / "samplers.py").is_file():
            subprocess.run(["rm", "-rf", str(repo)])  # the clone just made, so that the next run clones again
            raise SystemExit(f"{REPO_URL} holds no lib/: it is not this project's repository. Set its address and run "
                             f"this cell again: os.environ['S2DM_REPO_URL'] = '<git URL>' in a cell above.")
    if os.environ.get("S2DM_NO_INSTALL") != "1":
        if subprocess.run([sys.executable, str(repo / "scripts" / "install_missing.py")]).returncode:
            raise SystemExit("Installing the packages this runtime lacks failed (pip's message is above; no network?). "
                             "Connect the runtime to the network and run this cell again, or, where the packages are "
                             "present, set os.environ['S2DM_NO_INSTALL'] = '1' in a cell above.")
        importlib.invalidate_caches()
if repo is not None and str(repo) not in sys.path:
    sys.path.insert(0, str(repo))
print("lib:", Path(importlib.util.find_spec("lib").origin).parent)
