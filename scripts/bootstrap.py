"""The setup every notebook runs first (its first cell, scripts/bootstrap_cell.py, finds this file and execs it).

The cell has found the repository around the notebook, or on Colab cloned REPO_URL into CLONE; this puts
the repository on ``sys.path`` and, for a fresh Colab clone, installs only the pinned packages Colab
lacks (never torch: scripts/install_missing.py; ``S2DM_NO_INSTALL=1`` skips it). It runs in the
notebook's namespace: ``BOOT`` (this file) and ``CLONE`` come from the cell.
"""
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

_repo = Path(BOOT).resolve().parents[1]  # noqa: F821  (defined by the cell that execs this file)
if _repo == Path(CLONE).resolve() and os.environ.get("S2DM_NO_INSTALL") != "1":  # noqa: F821
    if subprocess.run([sys.executable, str(_repo / "scripts" / "install_missing.py")]).returncode:
        raise SystemExit("Installing the packages this runtime lacks failed (pip's message is above; no network?). "
                         "Connect the runtime to the network and run this cell again, or, where the packages are "
                         "present, set os.environ['S2DM_NO_INSTALL'] = '1' in a cell above.")
    importlib.invalidate_caches()
if str(_repo) not in sys.path:
    sys.path.insert(0, str(_repo))
print("lib:", Path(importlib.util.find_spec("lib").origin).parent)
