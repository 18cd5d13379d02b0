"""Test-suite settings: one intra-op thread per process; tests marked ``cuda`` skipped without a GPU; tests
marked ``browser`` run only when asked for (``pytest -m browser``, or ``S2DM_BROWSER_TESTS=1``).

The ci-sized tensors are tiny, and on a 2-core machine several torch processes (pytest, notebook
kernels, torchrun workers) spinning 2 threads each slow each other down by an order of magnitude."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Skip the ``browser`` tests (a JupyterLab server and Chromium, ~1 min) unless the marker expression names
    them or ``S2DM_BROWSER_TESTS=1``, so `make test` and `pytest tests` leave them out. Skip the ``cuda`` tests
    where no CUDA device is visible (as diffusers' ``require_torch_gpu``), unless the GPU check's dry run asks
    for them on the CPU (``S2DM_CUDA_TESTS_ON_CPU=1``)."""
    import pytest

    if "browser" not in (config.getoption("markexpr") or "") and os.environ.get("S2DM_BROWSER_TESTS") != "1":
        skip = pytest.mark.skip(reason="a browser test: run with pytest -m browser (or S2DM_BROWSER_TESTS=1)")
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(skip)
    if torch.cuda.is_available() or os.environ.get("S2DM_CUDA_TESTS_ON_CPU") == "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (pytest -m cuda on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
