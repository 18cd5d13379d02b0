# Setup: the same first cell in every notebook (kept in scripts/bootstrap_cell.py; sync_bootstrap.py copies it).
# It makes `lib` importable: from the repository around this notebook, else the installed project, else,
# on Colab, from a clone of REPO_URL, installing only the pinned packages Colab lacks (never torch).
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
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", REPO_URL, str(repo)], check=True)
    if os.environ.get("S2DM_NO_INSTALL") != "1":
        subprocess.run([sys.executable, str(repo / "scripts" / "install_missing.py")], check=True)
        importlib.invalidate_caches()
if repo is not None and str(repo) not in sys.path:
    sys.path.insert(0, str(repo))
print("lib:", Path(importlib.util.find_spec("lib").origin).parent)
