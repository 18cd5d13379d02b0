"""Progress bars: tqdm's widget bar in an interactive Jupyter kernel, its plain text bar elsewhere.

A widget bar saved by papermill is a reference to widget state nobody can render, so headless runs
(``scripts/run_notebook.py`` sets ``S2DM_PLAIN_BARS=1``; set it yourself for a bare ``papermill``)
get the text bar, and so do terminals and kernels without ``ipywidgets`` (where ``tqdm.auto`` would
warn and fall back anyway). The choice is made once, when this module is first imported."""
from __future__ import annotations

import os
import sys


def widgets_wanted() -> bool:
    """True in a Jupyter kernel with ipywidgets installed, unless ``S2DM_PLAIN_BARS`` is set (not 0)."""
    if os.environ.get("S2DM_PLAIN_BARS", "") not in ("", "0"):
        return False
    ipython = sys.modules.get("IPython")  # never imported here: a plain script has no kernel to ask
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or "IPKernelApp" not in shell.config:
        return False
    try:
        import ipywidgets  # noqa: F401  (what tqdm.notebook draws with)
    except ImportError:
        return False
    return True


if widgets_wanted():
    from tqdm.notebook import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm", "widgets_wanted"]
